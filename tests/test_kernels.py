"""Kernel code generation: the hot loop is SIMD and float32 stays float32.

Checked in a fresh process with an empty numba cache (inspect_asm does not work on
kernels loaded from the on-disk cache)."""
import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, re, itertools, sys, numba, numpy as np
from fastadam.kernels import registry
from fastadam.kernels.launch import build_launchers
from fastadam.kernels.spec import N_HYPER, N_GROUP_SCALARS
out = {}
cases = []
for alg in registry.BY_ID:
    if alg.layout != "dense" or alg.name not in sys.argv[1:]:   # row-sparse algorithms
        continue                                               # have kernels of their own
    wds = [0, 2] if alg.name == "adamw" else ([0, 1] if alg.name == "adamax" else [0, 1, 2])
    variants = [(0, 2), (1, 3)] if alg.name in ("adam", "adamw") else [(0, len(alg.state))]
    # Every flag on and off for each algorithm and variant, not their full product (each
    # launcher compiles in ~1 s here): each weight-decay mode with grad scaling and
    # averaging off, and the last mode with both on.
    for var, ns in variants:
        for wd in wds:
            cases.append((alg, wd, var, ns, False, False))
        cases.append((alg, wds[-1], var, ns, True, True))
for alg, wd, var, ns, sg, avg in cases:
    ser = build_launchers(alg.id, var, ns, wd, sg, avg)[0]
    for dt in (np.float32, np.float64):
        a = np.zeros(64, dt)
        h = np.zeros(N_HYPER); h[5:8] = (0.9, 0.999, 1e-8)
        ser(a, a.copy(), a.copy(), a.copy() + 1, a.copy(), a.copy(), h, 1, np.ones(N_GROUP_SCALARS))
        # this dtype's code only (inspect_asm() would also return the other dtype's,
        # which could pass a check this one fails)
        sig, = [s for s in ser.signatures if s[0].dtype == numba.from_dtype(np.dtype(dt))]
        asm = ser.inspect_asm(sig)
        key = f"{alg.name}-{wd}-{var}-{sg}-{avg}-{np.dtype(dt).name}"
        out[key] = {
            "packed_sqrt": len(re.findall(r"\bv?sqrtp[sd]\b", asm)),
            "packed_div": len(re.findall(r"\bv?divp[sd]\b", asm)),
            "packed_rcp": len(re.findall(r"\bv?rcp(?:14)?ps\s+[^\n]*%[yz]mm", asm)),
            "promote": len(re.findall(r"\bv?cvtps2pd\b", asm)),
        }
from fastadam.kernels import approx
out["estimate"] = approx.FAST
print(json.dumps(out))
"""


# Split in three (one process each) so that test workers share the compile work.
_GROUPS = {"adam": 8, "adamw adamax": 6 + 3, "nadam radam": 4 + 4}


@pytest.mark.parametrize("names", list(_GROUPS))
def test_hot_loop_is_vectorised_and_float32_is_not_promoted(names, tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", PROBE, *names.split()], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    estimate = out.pop("estimate")
    # kernel keys (adam 2 x 4, adamw 2 x 3, adamax 3, nadam 4, radam 4), two dtypes each
    assert len(out) == 2 * _GROUPS[names]
    for key, r in out.items():
        if not key.startswith("adamax-"):   # AdaMax has no sqrt
            assert r["packed_sqrt"] > 0, f"{key}: sqrt is not vectorised"
        if estimate and not key.startswith("adamax-") and key.endswith("float32"):
            # kernels/approx.py: reciprocal estimate + fmas (AdaMax keeps its divide)
            assert r["packed_rcp"] > 0 and r["packed_div"] == 0, f"{key}: {r}"
        else:
            assert r["packed_div"] > 0, f"{key}: division is not vectorised"
        if key.endswith("float32"):
            assert r["promote"] == 0, f"{key}: float32 loop converts to float64"


def test_the_probe_groups_cover_every_dense_algorithm():
    from fastadam.kernels import registry
    dense = {a.name for a in registry.BY_ID if a.layout == "dense"}
    assert dense == {n for names in _GROUPS for n in names.split()}
