#!/usr/bin/env bash
# Install fastadam with its test extras (and CPU torch for the parity tests) into the
# current Python, then run the whole test suite. This is the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch==2.13.0 is the CPU build available on these machines; any torch>=2.0 works.
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test,sklearn,plot,mpi,dask]" "torch==2.13.0"
# One pytest worker per core (pytest-xdist). "worksteal" hands each worker a contiguous
# run of tests (a file's tests share the kernels they compile) and rebalances at the
# end. PYTEST_WORKERS=0 runs everything in this process.
# Default: the cores this process may use (nproc), at most 4 (each worker can take
# several GB while numba compiles the larger parallel kernels).
CORES=$(nproc 2>/dev/null || echo 2)
WORKERS=${PYTEST_WORKERS:-$(( CORES < 4 ? CORES : 4 ))}
PAR=(-n "$WORKERS" --dist worksteal)
if [ "$WORKERS" = 0 ]; then PAR=(); fi
# The parity and error tests again with every unsafe shortcut off (kernels/unsafe.py).
# The variants' float32 torch comparison is left to the main run: each variant compiles
# its own kernels, and the float64 reference and torch runs cover the same code paths.
FASTADAM_PORTABLE=1 "$PY" -m pytest -q "${PAR[@]}" tests/test_variants.py \
    tests/test_torch_parity.py tests/test_errors.py \
    -k "(torch or reference or grads) and not test_matches_torch_in_float32"
"$PY" -m pytest -q "${PAR[@]}" "$@"
