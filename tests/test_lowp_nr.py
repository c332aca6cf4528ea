"""NAdam and RAdam with bfloat16 state on float32 parameters (fastadam.nadam_step_lowp /
radam_step_lowp, kernels/nr_lowp.py, and fa.NAdam / fa.RAdam(state_dtype="bfloat16"));
16-bit parameters and 8-bit state: test_lowp_nr16.py.

Against (a) the float32 kernel itself (fa.nadam_step / fa.radam_step) run on the decoded
state, with its new state rounded to bfloat16 to nearest even (bit for bit), and (b)
the float64 reference of kernels/nadam.py / radam.py from the decoded state, rounded the
same way (state within 1 bfloat16 ulp per step)."""
import functools

import ml_dtypes
import numpy as np
import pytest

import fastadam as fa
from fastadam import config
from fastadam.kernels import registry
from lowp_helpers import (assert_cross_layout_refused, assert_round_trips, grads_like, nr_f32_step,
                          nr_lowp_step, params, snap,
                          step_both)

BF = np.dtype(ml_dtypes.bfloat16)
LR = 1e-2
ALGS = ("nadam", "radam")
CLASSES = {"nadam": fa.NAdam, "radam": fa.RAdam}


def bf_round(x64):
    return np.asarray(x64, np.float64).astype(np.float32).astype(BF).astype(np.float64)


def bf_ulp(x):
    a = np.maximum(np.abs(np.asarray(x, np.float64)), 2.0 ** -126)
    return 2.0 ** (np.floor(np.log2(a)) - 7)


# the functional NAdam / RAdam steps at this file's learning rate (lowp_helpers)
lowp_step = functools.partial(nr_lowp_step, lr=LR)
f32_step = functools.partial(nr_f32_step, lr=LR)


VARIANTS = [{}, {"weight_decay": 0.05, "maximize": True},
            {"weight_decay": 0.05, "decoupled_weight_decay": True}]


@pytest.mark.parametrize("var", VARIANTS)
@pytest.mark.parametrize("alg", ALGS)
def test_bf16_state_steps_match_rounding_references(alg, var):
    rng = np.random.default_rng(1)
    n = 3000
    p = rng.standard_normal(n).astype(np.float32)
    st = fa.init_lowp_state(p, algorithm=alg)
    assert st["exp_avg"].dtype == BF and st["exp_avg_sq"].dtype == BF
    mp = 1.0
    for t in range(1, 12):          # RAdam: unrectified steps first, then rectified
        g = (rng.standard_normal(n) * (0.01 if t % 3 == 0 else 1.0)).astype(np.float32)
        if t == 7:
            g[:7] = [0.0, -0.0, 1e-30, np.inf, -np.inf, np.nan, 3e38]
        m0, v0 = st["exp_avg"].astype(np.float32), st["exp_avg_sq"].astype(np.float32)
        p0 = p.copy()
        mp_new = lowp_step(alg, p, g, st, t, mp, **var)
        # (a) the float32 kernel on the decoded state, its state rounded to nearest even
        p32, m32, v32 = p0.copy(), m0.copy(), v0.copy()
        with np.errstate(all="ignore"):
            mp32 = f32_step(alg, p32, g, m32, v32, t, mp, **var)
        assert mp_new == mp32
        assert np.array_equal(p.view(np.uint32), p32.view(np.uint32)), t
        assert np.array_equal(st["exp_avg"].view(np.uint16), m32.astype(BF).view(np.uint16))
        assert np.array_equal(st["exp_avg_sq"].view(np.uint16),
                              v32.astype(BF).view(np.uint16))
        # (b) the float64 reference from the decoded state, rounded the same way
        # (g * g overflows float32 for |g| = 3e38, not float64: left to (a))
        ok = (np.abs(g) < 1e19) & np.isfinite(p0) & np.isfinite(m0) & np.isfinite(v0)
        ref = {"exp_avg": m0[ok].astype(np.float64), "exp_avg_sq": v0[ok].astype(np.float64)}
        if alg == "nadam":
            ref["mu_product"] = mp
        hp = {"lr": LR, "betas": (0.9, 0.999), "eps": 1e-8, "momentum_decay": 4e-3,
                  "weight_decay": var.get("weight_decay", 0.0),
                  "decoupled": var.get("decoupled_weight_decay", False),
                  "maximize": var.get("maximize", False)}
        p64 = registry.get(alg).reference(p0[ok], g[ok], ref, t, hp)
        for k in ("exp_avg", "exp_avg_sq"):
            got, want = st[k][ok].astype(np.float64), ref[k]
            assert np.all(np.abs(got - bf_round(want)) <= bf_ulp(want) + 1e-30), (t, k)
        step = np.abs(p64 - p0[ok])
        assert np.all(np.abs(p[ok] - p64) <= 1e-6 * np.abs(p64) + 1e-4 * step + 1e-12), t
        if alg == "nadam":
            assert mp_new == pytest.approx(ref["mu_product"], rel=1e-14)
        mp = mp_new
    # non-finite gradients flow into the state as in the float32 kernel: nothing hidden
    assert np.isnan(p[3:6]).all()


@pytest.mark.parametrize("alg", ALGS)
def test_parallel_equals_serial_bit_for_bit(alg, monkeypatch):
    rng = np.random.default_rng(2)
    n = 3 * config.BLOCK + 1234                  # several parallel work items
    p0 = rng.standard_normal(n).astype(np.float32)
    gs = [rng.standard_normal(n).astype(np.float32) for _ in range(7)]
    out = []
    for threshold in (1 << 62, 0):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", threshold)
        p, st, mp = p0.copy(), fa.init_lowp_state(p0, algorithm=alg), 1.0
        for t, g in enumerate(gs, 1):
            mp = lowp_step(alg, p, g, st, t, mp, weight_decay=0.01)
        out.append((p.view(np.uint32), st["exp_avg"].view(np.uint16),
                    st["exp_avg_sq"].view(np.uint16), mp))
    assert all(np.array_equal(a, b) for a, b in zip(*out))


def test_functional_errors_name_the_argument_and_change_nothing():
    rng = np.random.default_rng(3)
    p = rng.standard_normal(50).astype(np.float32)
    g = rng.standard_normal(50).astype(np.float32)
    st = fa.init_lowp_state(p, algorithm="nadam")
    fa.nadam_step_lowp(p, g, st, step=1, mu_product=1.0)
    saved = [p.copy()] + [a.copy() for a in st.values()]

    def unchanged():
        return all(np.array_equal(a.view(np.uint8), b.view(np.uint8))
                   for a, b in zip([p] + list(st.values()), saved))

    cases = [
        (ValueError, "mu_product", lambda: fa.nadam_step_lowp(p, g, st, step=2,
                                                              mu_product=1.5)),
        (ValueError, "momentum_decay", lambda: fa.nadam_step_lowp(
            p, g, st, step=2, mu_product=0.5, momentum_decay=-1.0)),
        (ValueError, "lr", lambda: fa.radam_step_lowp(p, g, st, step=2, lr=-1.0)),
        (ValueError, "step", lambda: fa.radam_step_lowp(p, g, st, step=0)),
        (TypeError, "decoupled_weight_decay", lambda: fa.radam_step_lowp(
            p, g, st, step=2, decoupled_weight_decay=1)),
        (TypeError, "grad", lambda: fa.radam_step_lowp(p, g.astype(np.float64), st, step=2)),
        (ValueError, "exp_avg_sq", lambda: fa.radam_step_lowp(
            p, g, {"exp_avg": st["exp_avg"], "exp_avg_sq": st["exp_avg_sq"][:-1]}, step=2)),
        (ValueError, "grad", lambda: fa.radam_step_lowp(p, p, st, step=2)),     # aliasing
        # 8-bit state is not offered for RAdam (docs/low_precision.md: measured)
        (ValueError, "int8", lambda: fa.radam_step_lowp(
            p, g, fa.init_lowp_state(p, state_dtype="int8"), step=2)),
        (ValueError, "int8", lambda: fa.init_lowp_state(p, state_dtype="int8",
                                                        algorithm="radam")),
        (ValueError, "stochastic", lambda: fa.radam_step_lowp(p, g, st, step=2,
                                                              rounding="stochastic")),
        (ValueError, "rounding", lambda: fa.nadam_step_lowp(p, g, st, step=2, mu_product=0.5,
                                                            rounding="up")),
        (TypeError, "seed", lambda: fa.radam_step_lowp(p, g, st, step=2, seed=1.5)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()
        assert unchanged(), match
    fa.nadam_step_lowp(p, g, st, step=2, mu_product=0.5)      # and it still steps
    assert not unchanged()


# ---------------------------------------------------------------- the optimizer objects
@pytest.mark.parametrize("alg", ALGS)
def test_optimizer_matches_functional_bit_for_bit_with_groups(alg):
    rng = np.random.default_rng(6)
    ps = params()
    ref = [p.reshape(-1).copy() for p in ps]
    extra = {"momentum_decay": 8e-3} if alg == "nadam" else {}
    opt = CLASSES[alg]([{"params": ps[:2]},
                        {"params": ps[2:], "weight_decay": 0.1, "maximize": True,
                         "decoupled_weight_decay": True, **extra}],
                       lr=LR, max_grad_norm=5.0, state_dtype="bfloat16")
    assert opt.state_bytes() == 4.0
    sts = [fa.init_lowp_state(r, algorithm=alg) for r in ref]
    mps = [1.0, 1.0]
    for t in range(1, 8):
        gs = grads_like(ps, rng)
        opt.step(gs)
        for gi, idx in ((0, (0, 1)), (1, (2,))):     # clipped per group
            norm = np.sqrt(sum(np.sum(gs[i].astype(np.float64) ** 2) for i in idx))
            assert opt.last_grad_norms[gi] == pytest.approx(norm, rel=1e-12)
            clip = np.float32(min(1.0, 5.0 / (norm + 1e-6)))
            kw = {} if gi == 0 else dict(weight_decay=0.1, maximize=True,
                                         decoupled_weight_decay=True, **extra)
            mp = mps[gi]
            for i in idx:
                new = lowp_step(alg, ref[i], (gs[i] * clip).reshape(-1), sts[i], t, mp, **kw)
            mps[gi] = new
    for p, r in zip(ps, ref):
        assert np.array_equal(p.reshape(-1), r)
    for i, st in enumerate(sts):
        assert opt.state[i]["step"] == 7
        for k, a in st.items():
            assert np.array_equal(opt.state[i][k].view(np.uint16), a.view(np.uint16))
    if alg == "nadam":
        assert list(opt.group_scalars["mu_product"]) == mps
        assert opt.state[2]["mu_product"] == mps[1]
        assert opt.state_dict()["state"][0]["mu_product"] == mps[0]


@pytest.mark.parametrize("alg", ALGS)
def test_optimizer_follows_float32_optimizer_within_bf16_tolerance(alg):
    rng = np.random.default_rng(12)
    ps = params()
    qs = [p.copy() for p in ps]
    a = CLASSES[alg](ps, lr=1e-3, state_dtype="bfloat16")
    b = CLASSES[alg](qs, lr=1e-3)
    # Each step rounds each stored moment once (relative 2**-8, bfloat16's unit
    # roundoff) and carries the earlier error forward times beta:
    # |err_t| <= beta * |err_{t-1}| + 2**-8 * (|y_t| + |err_{t-1}|)
    # (y: the float32 optimizer's moment), plus float32 noise.
    bound = {(i, k): 0.0 for i in range(len(ps)) for k in ("exp_avg", "exp_avg_sq")}
    for _ in range(8):
        g = grads_like(ps, rng)
        a.step(g)
        b.step(g)
        for (i, k), e in bound.items():
            x = a.state[i][k].astype(np.float64).reshape(-1)
            y = b.state[i][k].astype(np.float64).reshape(-1)
            beta = 0.9 if k == "exp_avg" else 0.999
            e = beta * e + 2.0 ** -8 * (np.abs(y) + e) + 1e-6 * np.abs(y)
            assert np.all(np.abs(x - y) <= e + 1e-30), k
            bound[i, k] = e
    for i in range(len(ps)):
        d = np.abs(ps[i] - qs[i])
        assert d.max() <= 1e-3 * 8 * 0.05            # well below the 8 steps of ~lr each
    if alg == "nadam":
        assert np.array_equal(a.group_scalars["mu_product"], b.group_scalars["mu_product"])


@pytest.mark.parametrize("alg", ALGS)
def test_state_dict_checkpoint_round_trip_exact(alg, tmp_path):
    rng = np.random.default_rng(8)
    ps = params()
    cls = CLASSES[alg]
    opt = cls(ps, lr=LR, weight_decay=0.01, state_dtype="bfloat16")
    for _ in range(3):
        opt.step(grads_like(ps, rng))
    sd = opt.state_dict()
    assert sd["algorithm"] == alg and sd["state_dtype"] == "bfloat16"
    st = sd["state"][0]
    want = {"step", "exp_avg", "exp_avg_sq"} | ({"mu_product"} if alg == "nadam" else set())
    assert set(st) == want and st["exp_avg_sq"].dtype == np.uint16
    assert_round_trips(opt, ps, lambda qs: cls(qs, lr=LR, weight_decay=0.01,
                                                state_dtype="bfloat16"),
                       tmp_path / "ck.npz", rng)


def test_cross_layout_nonfinite_and_bad_input_change_nothing():
    rng = np.random.default_rng(9)
    ps = params()
    f32 = fa.NAdam([p.copy() for p in ps], lr=LR)
    bf = fa.NAdam(ps, lr=LR, state_dtype="bfloat16", nonfinite="skip")
    step_both(f32, bf, ps, rng)
    sd32, sdbf = assert_cross_layout_refused(f32, bf)
    # explicit conversion: float32 -> bfloat16 rounds to nearest even, mu_product kept
    from fastadam import lowp
    with pytest.raises(ValueError, match="int8"):          # not offered for RAdam
        lowp.convert_state_dict(fa.RAdam([p.copy() for p in ps]).state_dict(),
                                state_dtype="int8")
    conv = fa.NAdam([p.copy() for p in ps], lr=LR, state_dtype="bfloat16")
    conv.load_state_dict(lowp.convert_state_dict(sd32, state_dtype="bfloat16"))
    assert conv.state[0]["mu_product"] == sd32["state"][0]["mu_product"] != 1.0
    assert np.array_equal(conv.state[0]["exp_avg_sq"],
                          sd32["state"][0]["exp_avg_sq"].reshape(-1).astype(BF))
    radam_sd = fa.RAdam([p.copy() for p in ps], state_dtype="bfloat16").state_dict()
    before = snap(bf, ps)
    with pytest.raises(ValueError, match="'radam' optimizer, not 'nadam'"):
        bf.load_state_dict(radam_sd)
    gs = grads_like(ps, rng)
    gs[1][2] = np.inf
    bf.step(gs)                                                # skipped: mu_product too
    assert bf.skipped_steps == 1
    bf.skipped_steps = 0
    assert snap(bf, ps) == before
    gs = grads_like(ps, rng)
    with pytest.raises(TypeError, match=r"grads\[2\]"):
        bf.step(gs[:2] + [gs[2].astype(np.float64)])
    bf.param_groups[0]["momentum_decay"] = -1.0
    with pytest.raises(ValueError, match="momentum_decay"):
        bf.step(gs)
    bf.param_groups[0]["momentum_decay"] = 4e-3
    for key, val, match in (("exp_avg_sq", sdbf["state"][1]["exp_avg_sq"][:-1],
                             r"\[1\]\['exp_avg_sq'\]"),
                            ("mu_product", float("nan"), "mu_product")):
        sd = bf.state_dict()
        sd["state"][1 if key == "exp_avg_sq" else 0][key] = val
        with pytest.raises(ValueError, match=match):
            bf.load_state_dict(sd)
        assert snap(bf, ps) == before
    sd = bf.state_dict()
    del sd["state"][0]["mu_product"]
    with pytest.raises(ValueError, match="lacks 'mu_product'"):
        bf.load_state_dict(sd)
    assert snap(bf, ps) == before
    bf.step(gs)                                                # and it still steps
    assert snap(bf, ps) != before


@pytest.mark.parametrize("alg", ALGS)
def test_refusals(alg):
    ps = params()
    before = [p.copy() for p in ps]
    cls = CLASSES[alg]
    if alg == "radam":
        with pytest.raises(ValueError, match="state_dtype='int8' is not available for 'radam'"):
            cls(ps, state_dtype="int8")
    with pytest.raises(ValueError, match="average"):
        cls(ps, state_dtype="bfloat16", average=0.99)
    with pytest.raises(ValueError, match="average"):
        cls([p.astype(BF) for p in ps], average=0.99)
    with pytest.raises(TypeError, match="parameter 1"):
        cls([ps[0].astype(BF), ps[1]], state_dtype="bfloat16")
    with pytest.raises(ValueError, match="master_weights"):
        cls(ps, master_weights=True, state_dtype="bfloat16")     # float32 parameters
    with pytest.raises(ValueError, match="choose one"):
        cls([p.astype(BF) for p in ps], master_weights=True, compensation=True)
    assert all(np.array_equal(p, q) for p, q in zip(ps, before))
