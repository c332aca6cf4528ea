"""Kernel code generation: the hot loop is SIMD and float32 stays float32.

Checked in a fresh process with an empty numba cache (inspect_asm does not work on
kernels loaded from the on-disk cache)."""
import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, re, itertools, numpy as np
from fastadam.kernels import adam as A, adamax as X, common as K
out = {}
cases = [("adam", A, wd, ams, sg, avg) for wd, ams, sg, avg in
         itertools.product([0, 1, 2], [False, True], [False, True], [False, True])]
cases += [("adamax", X, wd, False, sg, avg) for wd, sg, avg in
          itertools.product([0, 1], [False, True], [False, True])]
for alg, mod, wd, ams, sg, avg in cases:
    ser = mod.make_kernels(wd, ams, sg, avg)[0]
    for dt in (np.float32, np.float64):
        a = np.zeros(64, dt)
        ser(a, a.copy(), a.copy(), a.copy() + 1, a.copy(), a.copy(), np.zeros(K.N_HYPER), 1)
        asm = "\n".join(ser.inspect_asm().values())
        key = f"{alg}-{wd}-{ams}-{sg}-{avg}-{np.dtype(dt).name}"
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


def test_hot_loop_is_vectorised_and_float32_is_not_promoted(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    estimate = out.pop("estimate")
    assert len(out) == 2 * (24 + 8)
    for key, r in out.items():
        if key.startswith("adam-"):   # AdaMax has no sqrt
            assert r["packed_sqrt"] > 0, f"{key}: sqrt is not vectorised"
        if estimate and key.startswith("adam-") and key.endswith("float32"):
            # kernels/approx.py: reciprocal estimate + fmas (AdaMax keeps its divide)
            assert r["packed_rcp"] > 0 and r["packed_div"] == 0, f"{key}: {r}"
        else:
            assert r["packed_div"] > 0, f"{key}: division is not vectorised"
        if key.endswith("float32"):
            assert r["promote"] == 0, f"{key}: float32 loop converts to float64"
