"""The reports of ``fastadam bench``: the text tables, the targets of docs/performance.md
with their measured ratios, and the throughput plot. They read the result dictionaries
that :mod:`fastadam.bench` builds and measure nothing."""
from __future__ import annotations

from .bench import BYTES_PER_PARAM, MANY_CASE, OBJECT_CASE, PEERS


def _ratio(a, b):
    return None if (a is None or b is None or a == 0) else b / a


def _sec(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d["sec"] if isinstance(d, dict) and "sec" in d else None


def targets(res):
    """Each target of docs/performance.md ("Current targets") with its measured ratio and
    whether it is met."""
    fa, peers = res["fastadam"], res["peers"]
    torch = peers.get("torch", {})
    rows = []

    def add(what, target, ratio, ok):
        rows.append({"what": what, "target": target,
                     "measured": None if ratio is None else round(ratio, 3),
                     "met": None if ratio is None or ok(ratio) is None else bool(ok(ratio))})

    for dtype, sizes, lim in (("float32", (10**6, 10**7, 10**8), 0.95),
                              ("float32", (10**5,), 0.85), ("float32", (10**4,), 0.50),
                              ("float64", (10**7, 10**8), 0.95)):
        for n in sizes:
            r = _ratio(_sec(fa, "flat", dtype, str(n)), _sec(fa, "floor", dtype, str(n)))
            add(f"{dtype} step {n:.0e} vs floor", f">= {lim:.2f} x floor", r,
                lambda x, lim=lim: x >= lim)
    r = _ratio(_sec(fa, "flat", "float32", str(10**5)), _sec(torch, "flat", "float32", str(10**5)))
    add("float32 step 1e5 vs torch fused", ">= 2 x torch fused", r, lambda x: x >= 2)
    sec = _sec(fa, "flat", "float32", str(10**3))
    add("functional adam_step, float32 1e3: microseconds", "<= 1.5 us",
        None if sec is None else sec * 1e6, lambda x: x <= 1.5)
    r = _ratio(sec, _sec(torch, "flat", "float32", str(10**3)))
    add("functional adam_step, float32 1e3, vs torch fused", ">= 20 x torch fused", r,
        lambda x: x >= 20)
    name = OBJECT_CASE[0]
    r = _ratio(_sec(fa, "cases", name), _sec(torch, "cases", name))
    add("object API step (opt.grads), 1e3 params in 2 arrays, vs torch fused",
        ">= 25 x torch fused", r, lambda x: x >= 25)
    r = _ratio(_sec(fa, "cases", name + "_list"), _sec(torch, "cases", name))
    add("  same with a grads list each step, vs torch fused", ">= 20 x torch fused", r,
        lambda x: x >= 20)
    sec = _sec(fa, "cases", name + "_list")
    add("  same with a grads list each step: microseconds", "<= 1.5 us",
        None if sec is None else sec * 1e6, lambda x: x <= 1.5)
    name = MANY_CASE[0]
    r = _ratio(_sec(fa, "cases", name), _sec(fa, "cases", name + "_flat"))
    add("100 separate arrays of 1e4 vs flat path", ">= 0.87 x flat (within 15%)", r,
        lambda x: x * 1.15 >= 1 - 1e-9)
    r = _ratio(_sec(fa, "cases", name), _sec(torch, "cases", name))
    add("100 separate arrays of 1e4 vs torch fused", ">= 3 x torch fused", r, lambda x: x >= 3)
    th = fa.get("threads") or {}
    r = _ratio(_sec(th, "sec_n"), _sec(th, "sec_1"))
    add(f"{th.get('threads', 2)} threads vs 1, float32 1e6", ">= 1.7 x", r, lambda x: x >= 1.7)
    cs = res.get("cold_start", {}).get("warm")
    rows.append({"what": "cold start, warm cache: import + first step beyond import numba",
                 "target": "<= 0.5 s", "measured": None if not cs else round(cs["beyond_numba"], 3),
                 "met": None if not cs else cs["beyond_numba"] <= 0.5})
    return rows


def _fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def format_report(res):
    info = res["machine"]
    fa, peers = res["fastadam"], res["peers"]
    lines = [
        f"fastadam {info['fastadam']} | numba {info['numba']} | numpy {info['numpy']} | "
        f"torch {info['torch'] or 'absent'} | Python {info['python']}",
        f"{info['platform']} | {info['cpu_count']} CPUs | threading layer "
        f"{fa.get('threading_layer', info['threading_layer'])} | "
        f"{fa.get('num_threads', info['num_threads'])} threads | parallel threshold "
        f"{info['parallel_threshold']} elements",
        "Median of many repeats; +-% is half the 25-75th percentile spread. Mparams/s and "
        "GB/s are fastadam's (28 B/param float32, 56 float64)."
        + (f" Each implementation ran {res['runs']} times, taking turns; the median run "
           "is shown." if res.get("runs", 1) > 1 else ""),
    ]
    if peers.get("torch", {}).get("num_threads"):
        lines[1] += f" | torch {peers['torch']['num_threads']} threads"
    load = res.get("load_before")
    if load is not None and load > (info["cpu_count"] or 1) - 0.75:
        lines.append(f"WARNING: the machine was busy before this run (load average {load:.2f} "
                     f"on {info['cpu_count']} CPUs): other processes take cores, so "
                     "multi-threaded and in-cache figures are low and noisy.")
    peer_names = [p for p in PEERS if p in peers and "error" not in peers[p]]
    for dtype in res["dtypes"]:
        lines.append("")
        head = (f"{dtype:8s} {'size':>6s} {'us/step':>10s} {'+-%':>5s} {'Mparams/s':>10s} "
                f"{'GB/s':>7s} {'floor Mp/s':>10s} {'% floor':>8s}")
        for p in peer_names:
            head += f" {'x ' + p:>9s}"
        lines.append(head)
        for n in res["sizes"]:
            k = str(n)
            d = fa["flat"][dtype].get(k)
            if d is None:
                continue
            sec, floor = d["sec"], _sec(fa, "floor", dtype, k)
            spread = 50 * (d["p75"] - d["p25"]) / sec
            row = (f"{'':8s} {n:>6.0e} {sec * 1e6:>10.2f} {spread:>5.1f} {n / sec / 1e6:>10.1f} "
                   f"{n * BYTES_PER_PARAM[dtype] / sec / 1e9:>7.2f} "
                   f"{n / floor / 1e6:>10.1f} {100 * floor / sec:>7.1f}%")
            for p in peer_names:
                row += f" {_fmt_ratio(_ratio(sec, _sec(peers[p], 'flat', dtype, k))):>9s}"
            lines.append(row)
    lines.append("")
    lines.append(f"{'case (float32)':44s} {'us/step':>10s}" + "".join(
        f" {'x ' + p:>9s}" for p in peer_names))
    cases = [(OBJECT_CASE[0], "object API, 1e3 params in 2 arrays (opt.grads)"),
             (OBJECT_CASE[0] + "_list", "  same, grads passed as a list each step"),
             (MANY_CASE[0], "object API, 100 separate arrays of 1e4"),
             (MANY_CASE[0] + "_flat", "object API, same 1e6 params flattened")]
    for key, label in cases:
        sec = _sec(fa, "cases", key)
        if sec is None:
            continue
        row = f"{label:44s} {sec * 1e6:>10.2f}"
        for p in peer_names:
            peer_key = key.rsplit("_", 1)[0] if key.endswith(("_flat", "_list")) else key
            row += f" {_fmt_ratio(_ratio(sec, _sec(peers[p], 'cases', peer_key))):>9s}"
        lines.append(row)
    th = fa.get("threads") or {}
    if th:
        r = _ratio(th["sec_n"]["sec"], th["sec_1"]["sec"])
        lines.append(f"{th['threads']} threads vs 1 at float32 {th['size']:.0e}: "
                     f"{th['sec_n']['sec'] * 1e6:.1f} us vs {th['sec_1']['sec'] * 1e6:.1f} us "
                     f"= {r:.2f}x")
    for key, label in (("warm", "warm cache"), ("empty", "empty cache")):
        cs = res.get("cold_start", {}).get(key)
        if cs:
            lines.append(f"cold start ({label}, median of {cs['runs']}): import numba "
                         f"{cs['import_numba']:.3f} s; then import fastadam + first adam_step "
                         f"{cs['beyond_numba']:.3f} s (import {cs['import_fastadam']:.3f} s); "
                         f"first object-API step {cs['first_object_step']:.3f} s more")
    for p in PEERS:
        if p in peers and "error" in peers[p]:
            lines.append(f"peer {p}: {peers[p]['error']}")
    lines.append("")
    lines.append("Targets (docs/performance.md in the fastadam repository), measured in this run:")
    for t in res["targets"]:
        if t["met"] is None:
            status = "info" if t["target"] == "-" and t["measured"] is not None else "not measured"
        else:
            status = "met" if t["met"] else "NOT MET"
        m = "-" if t["measured"] is None else (
            f"{t['measured']:.3f} s" if t["target"].endswith(" s") else
            f"{t['measured']:.2f} us" if t["target"].endswith(" us") else
            f"{t['measured']:.2f}x")
        lines.append(f"  {t['what']:62s} {t['target']:30s} {m:>9s}  {status}")
    return "\n".join(lines)


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res["dtypes"]), figsize=(6 * len(res["dtypes"]), 4.5),
                             squeeze=False)
    series = [("floor kernel", res["fastadam"].get("floor", {}), "k--"),
              ("fastadam", res["fastadam"]["flat"], "C0o-")]
    for i, p in enumerate(PEERS):
        if p in res["peers"] and "flat" in res["peers"][p]:
            series.append((p if p != "torch" else "torch fused", res["peers"][p]["flat"],
                           f"C{i + 1}s-"))
    for ax, dtype in zip(axes[0], res["dtypes"]):
        for label, data, style in series:
            pts = [(n, n / data[dtype][str(n)]["sec"] / 1e6) for n in res["sizes"]
                   if str(n) in data.get(dtype, {})]
            if pts:
                ax.plot(*zip(*pts), style, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("Mparams/s (median)")
        ax.set_title(f"Adam step, {dtype}, {res['machine']['num_threads']} threads "
                     f"({res['machine']['threading_layer']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_state_rows(res):
    lines = [f"{'n':>10}  {'state':>9}  {'ms/step':>9}  {'x fp32':>7}  {'state B/param':>13}"]
    for r in res["rows"]:
        lines.append(f"{r['n']:>10.0e}  {r['state_dtype']:>9}  {r['ms']:>9.3f}  "
                     f"{r['speedup_vs_float32']:>7.2f}  {r['state_bytes_per_param']:>13.3f}")
    lines.append(f"(load {res['load']}; one process, interleaved; ratios are what to read)")
    return "\n".join(lines)
