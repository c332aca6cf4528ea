"""fastadam's asv benchmarks (see asv_benches/asv.conf.json and docs)."""
