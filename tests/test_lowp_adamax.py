"""AdaMax with bfloat16 state (fastadam.adamax_step_lowp, kernels/adamax_lowp.py).

Against (a) a float32 NumPy emulation of the float32 AdaMax kernel's operations on the
decoded values with the state rounded to bfloat16 the same way (bit for bit), and (b) a
float64 reference rounded the same way (state within 1 bfloat16 ulp per step)."""
import ml_dtypes
import numpy as np
import pytest

import fastadam as fa
from fastadam import config
from lowp_helpers import (assert_cross_layout_refused, assert_round_trips, grads_like, params, snap,
                          step_both)

BF = np.dtype(ml_dtypes.bfloat16)
LR, B1, B2, EPS = 1e-2, 0.9, 0.999, 1e-8
F = np.float32


def bf_round(x64):
    return np.asarray(x64, np.float64).astype(np.float32).astype(BF).astype(np.float64)


def bf_ulp(x):
    a = np.maximum(np.abs(np.asarray(x, np.float64)), 2.0 ** -126)
    return 2.0 ** (np.floor(np.log2(a)) - 7)


def adamax64(p, g, m, u, step, *, lr=LR, wd=0.0, maximize=False):
    """Float64 AdaMax from float64 inputs: (m, u, upd); the new parameter is p - upd."""
    if maximize:
        g = -g
    g = g + wd * p
    m = B1 * m + (1 - B1) * g
    u = np.maximum(B2 * u, np.abs(g) + EPS)
    return m, u, lr / (1 - B1 ** step) * m / u


def adamax32(p, g, m, u, step, *, lr=LR, wd=0.0, maximize=False):
    """The float32 kernel's operations in NumPy float32 (scalars rounded once from
    float64, as the kernel's scalars row): (p_new, m, u)."""
    with np.errstate(all="ignore"):
        if maximize:
            g = g * F(-1.0)
        if wd:
            g = g + F(wd) * p
        m = F(B1) * m + F(1.0 - B1) * g
        u = F(B2) * u
        a = np.abs(g) + F(EPS)
        u = np.where((a > u) | np.isnan(a), a, u)
        upd = F(lr / (1.0 - B1 ** float(step))) * (m / u)
        return p - upd, m, u


def warm(rng, n, pdt=np.float32, state_dtype="bfloat16", steps=3, step_kw=None, **kw):
    """Parameters and state after ``steps`` steps (with the options ``step_kw``: pass
    those of the step a test then checks, so that the warm-up compiles no other kernel)."""
    p = rng.standard_normal(n).astype(np.float32).astype(pdt)
    st = fa.init_lowp_state(p, state_dtype=state_dtype, algorithm="adamax", **kw)
    for t in range(1, steps + 1):
        g = rng.standard_normal(n).astype(np.float32).astype(pdt)
        fa.adamax_step_lowp(p, g, st, step=t, lr=LR, **(step_kw or {}))
    return p, st


VARIANTS = [dict(), dict(wd=0.05), dict(maximize=True)]


@pytest.mark.parametrize("var", VARIANTS)
def test_bf16_state_steps_match_rounding_references(var):
    rng = np.random.default_rng(1)
    n = 3000
    p, st = warm(rng, n)
    for t in range(4, 12):
        g = (rng.standard_normal(n) * (0.01 if t % 3 == 0 else 1.0)).astype(np.float32)
        if t == 5:
            g[:7] = [0.0, -0.0, 1e-30, np.inf, -np.inf, np.nan, 3e38]
        m0, u0 = st["exp_avg"].astype(np.float32), st["exp_inf"].astype(np.float32)
        p0 = p.copy()
        fa.adamax_step_lowp(p, g, st, step=t, lr=LR, weight_decay=var.get("wd", 0.0),
                            maximize=var.get("maximize", False))
        # (a) float32 emulation + bfloat16 rounding of the state: bit for bit
        p32, m32, u32 = adamax32(p0, g, m0, u0, t, **var)
        assert np.array_equal(p.view(np.uint32), p32.view(np.uint32)), t
        assert np.array_equal(st["exp_avg"].view(np.uint16), m32.astype(BF).view(np.uint16))
        assert np.array_equal(st["exp_inf"].view(np.uint16), u32.astype(BF).view(np.uint16))
        # (b) float64 reference rounded the same way: within 1 bfloat16 ulp per step
        ok = np.isfinite(g) & np.isfinite(p)
        m, u, upd = adamax64(p0[ok].astype(np.float64), g[ok].astype(np.float64),
                             m0[ok].astype(np.float64), u0[ok].astype(np.float64), t, **var)
        m1, u1 = st["exp_avg"][ok].astype(np.float64), st["exp_inf"][ok].astype(np.float64)
        assert np.all(np.abs(m1 - bf_round(m)) <= bf_ulp(m) + 1e-30), t
        assert np.all(np.abs(u1 - bf_round(u)) <= bf_ulp(u) + 1e-30), t
        exact = p0[ok].astype(np.float64) - upd
        assert np.all(np.abs(p[ok] - exact) <= 1e-6 * np.abs(exact) + 1e-5 * np.abs(upd))
    # non-finite gradients flow into the state as in the float32 kernel (checked bit for
    # bit above): nothing is hidden
    u = st["exp_inf"].astype(np.float32)
    assert not np.isfinite(u[3:6]).any() and np.isnan(p[3:6]).all()


def test_parallel_equals_serial_bit_for_bit(monkeypatch):
    rng = np.random.default_rng(2)
    n = 3 * config.BLOCK + 1234                  # several parallel work items
    p0, st0 = warm(rng, n, steps=1, step_kw=dict(weight_decay=0.01))
    gs = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    out = []
    for threshold in (1 << 62, 0):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", threshold)
        p, st = p0.copy(), {k: a.copy() for k, a in st0.items()}
        for t, g in enumerate(gs, 2):
            fa.adamax_step_lowp(p, g, st, step=t, lr=LR, weight_decay=0.01)
        out.append((p.view(np.uint32), st["exp_avg"].view(np.uint16),
                    st["exp_inf"].view(np.uint16)))
    assert all(np.array_equal(a, b) for a, b in zip(*out))


def test_float32_state_and_master_weights_follow_float32_adamax_bit_for_bit():
    rng = np.random.default_rng(3)
    n = 2000
    pb = rng.standard_normal(n).astype(np.float32).astype(BF)
    w = pb.astype(np.float32)
    m, u = np.zeros(n, np.float32), np.zeros(n, np.float32)
    st = fa.init_lowp_state(pb, state_dtype="float32", master_weights=True,
                            algorithm="adamax")
    assert set(st) == {"exp_avg", "exp_inf", "master"}
    for t in range(1, 30):
        gb = rng.standard_normal(n).astype(np.float32).astype(BF)
        fa.adamax_step(w, gb.astype(np.float32), m, u, step=t, lr=1e-3, weight_decay=0.01)
        fa.adamax_step_lowp(pb, gb, st, step=t, lr=1e-3, weight_decay=0.01)
        assert np.array_equal(st["master"].view(np.uint32), w.view(np.uint32)), t
        assert np.array_equal(st["exp_avg"], m) and np.array_equal(st["exp_inf"], u)
        assert np.array_equal(pb, w.astype(BF))


@pytest.mark.parametrize("mode", ["nearest", "stochastic", "compensation"])
def test_bf16_params_one_step(mode):
    rng = np.random.default_rng(4)
    n = 3000
    kw = {"compensation": True} if mode == "compensation" else {}
    p, st = warm(rng, n, BF, step_kw=dict(weight_decay=0.01), **kw)
    g = rng.standard_normal(n).astype(np.float32).astype(BF)
    p0 = p.astype(np.float64)
    c0 = st["compensation"].astype(np.float64) if kw else 0.0
    m0, u0 = st["exp_avg"].astype(np.float64), st["exp_inf"].astype(np.float64)
    m, u, upd = adamax64(p0, g.astype(np.float64), m0, u0, 4, wd=0.01)
    exact = p0 - upd
    fa.adamax_step_lowp(p, g, st, step=4, lr=LR, weight_decay=0.01, seed=5,
                        rounding="stochastic" if mode == "stochastic" else "nearest")
    p1 = p.astype(np.float64)
    if mode == "nearest":
        assert np.all(np.abs(p1 - bf_round(exact)) <= bf_ulp(exact))
    elif mode == "stochastic":
        assert np.all(np.abs(p1 - exact) <= bf_ulp(exact) * (1 + 1e-3))
        assert 0 < np.count_nonzero(p1 != bf_round(exact)) < n
    else:
        c1 = st["compensation"].astype(np.float64)
        target = p0 + c0 - upd
        assert np.all(np.abs(p1 + c1 - target) <= bf_ulp(c1) / 2 + 1e-6 * np.abs(p0) + 1e-30)
        assert np.all(np.abs(c1) <= bf_ulp(p1))
    assert np.all(np.abs(st["exp_avg"].astype(np.float64) - bf_round(m)) <= bf_ulp(m) + 1e-30)
    assert np.all(np.abs(st["exp_inf"].astype(np.float64) - bf_round(u)) <= bf_ulp(u) + 1e-30)
    _, du = fa.lowp.decode_state(st)
    assert np.array_equal(du, st["exp_inf"].astype(np.float32)) and du.dtype == np.float32


def test_errors_name_the_argument_and_change_nothing():
    rng = np.random.default_rng(5)
    n = 500
    p, st = warm(rng, n, steps=1)
    g = rng.standard_normal(n).astype(np.float32)
    snap = [p.copy()] + [a.copy() for a in st.values()]

    def unchanged():
        return all(np.array_equal(a.view(np.uint8), b.view(np.uint8))
                   for a, b in zip([p] + list(st.values()), snap))

    adam_state = fa.init_lowp_state(p, state_dtype="bfloat16")
    cases = [
        (ValueError, "exp_inf", lambda: fa.adamax_step_lowp(p, g, adam_state, step=2)),
        (ValueError, "exp_avg_sq", lambda: fa.adam_step_lowp(p, g, st, step=2)),
        (ValueError, "lr", lambda: fa.adamax_step_lowp(p, g, st, step=2, lr=-1.0)),
        (ValueError, "betas", lambda: fa.adamax_step_lowp(p, g, st, step=2, betas=(0.9, 1.0))),
        (ValueError, "step", lambda: fa.adamax_step_lowp(p, g, st, step=0)),
        (TypeError, "maximize", lambda: fa.adamax_step_lowp(p, g, st, step=2, maximize=1)),
        (ValueError, "rounding", lambda: fa.adamax_step_lowp(p, g, st, step=2, rounding="up")),
        (ValueError, "stochastic", lambda: fa.adamax_step_lowp(p, g, st, step=2,
                                                               rounding="stochastic")),
        (TypeError, "grad", lambda: fa.adamax_step_lowp(p, g.astype(np.float64), st, step=2)),
        (ValueError, "grad", lambda: fa.adamax_step_lowp(p, g[:-1], st, step=2)),
        (ValueError, "exp_inf", lambda: fa.adamax_step_lowp(
            p, g, {"exp_avg": st["exp_avg"], "exp_inf": st["exp_inf"][:-1]}, step=2)),
        (ValueError, "exp_avg_absmax", lambda: fa.adamax_step_lowp(
            p, g, dict(st, exp_avg_absmax=np.zeros(2, np.float32)), step=2)),
        (ValueError, "grad", lambda: fa.adamax_step_lowp(p, p, st, step=2)),   # aliasing
        (ValueError, "int8", lambda: fa.init_lowp_state(p, state_dtype="int8",
                                                        algorithm="adamax")),
        (ValueError, "algorithm", lambda: fa.init_lowp_state(p, algorithm="sgd")),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()
        assert unchanged(), match
    fa.adamax_step_lowp(p, g, st, step=2)               # and it still steps
    assert not unchanged()


# ---------------------------------------------------------------- the optimizer object
def test_optimizer_matches_functional_bit_for_bit_with_group_edits():
    rng = np.random.default_rng(6)
    ps = params()
    ref = [p.reshape(-1).copy() for p in ps]
    opt = fa.Adamax([{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.1,
                                          "maximize": True}],
                    lr=3e-3, state_dtype="bfloat16")
    assert opt.state_bytes() == 4.0
    sts = [fa.init_lowp_state(r, algorithm="adamax") for r in ref]
    for t in range(1, 6):
        lr0 = 3e-3 * 0.5 ** t
        opt.param_groups[0]["lr"] = lr0
        if t == 3:
            opt.param_groups[1]["betas"] = (0.8, 0.99)
        gs = grads_like(ps, rng)
        if t % 2:
            opt.step(gs)
        else:                                         # through the preallocated gradients
            for dst, g in zip(opt.grads, gs):
                dst[...] = g
            opt.step()
        for i, (r, g, st) in enumerate(zip(ref, gs, sts)):
            kw = ({"lr": lr0} if i < 2 else
                  {"lr": 3e-3, "weight_decay": 0.1, "maximize": True,
                   "betas": (0.8, 0.99) if t >= 3 else (0.9, 0.999)})
            fa.adamax_step_lowp(r, g.reshape(-1), st, step=t, **kw)
    for p, r in zip(ps, ref):
        assert np.array_equal(p.reshape(-1), r)
    for i, st in enumerate(sts):
        assert opt.state[i]["step"] == 5
        for k, a in st.items():
            assert np.array_equal(opt.state[i][k].view(np.uint16), a.view(np.uint16))


def test_clipping_as_prescaled_gradient():
    rng = np.random.default_rng(11)
    ps = params()
    ref = [p.reshape(-1).copy() for p in ps]
    opt = fa.Adamax(ps, lr=1e-2, max_grad_norm=0.5, state_dtype="bfloat16")
    sts = [fa.init_lowp_state(r, algorithm="adamax") for r in ref]
    for t in range(1, 4):
        gs = grads_like(ps, rng)
        opt.step(gs)
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in gs))
        assert opt.last_grad_norms[0] == pytest.approx(norm, rel=1e-12)
        clip = np.float32(min(1.0, 0.5 / (norm + 1e-6)))
        for r, g, st in zip(ref, gs, sts):
            fa.adamax_step_lowp(r, (g * clip).reshape(-1), st, step=t, lr=1e-2)
    for p, r in zip(ps, ref):
        assert np.array_equal(p.reshape(-1), r)


def test_bf16_params_optimizer_matches_functional():
    rng = np.random.default_rng(7)
    ps = [p.astype(BF) for p in params()]
    ref = [p.reshape(-1).copy() for p in ps]
    opt = fa.Adamax(ps, lr=1e-2, state_dtype="float32", master_weights=True)
    sts = [fa.init_lowp_state(r, state_dtype="float32", master_weights=True,
                              algorithm="adamax") for r in ref]
    for t in range(1, 4):
        gs = [g.astype(BF) for g in grads_like(ps, rng)]
        opt.step(gs)
        for r, g, st in zip(ref, gs, sts):
            fa.adamax_step_lowp(r, g.reshape(-1), st, step=t, lr=1e-2)
    assert all(np.array_equal(p.reshape(-1).view(np.uint16), r.view(np.uint16))
               for p, r in zip(ps, ref))
    assert np.array_equal(opt.state[0]["master"], sts[0]["master"])


def test_state_dict_checkpoint_round_trip_exact(tmp_path):
    rng = np.random.default_rng(8)
    ps = params()
    opt = fa.Adamax(ps, lr=1e-2, weight_decay=0.01, state_dtype="bfloat16")
    for _ in range(3):
        opt.step(grads_like(ps, rng))
    sd = opt.state_dict()
    assert sd["algorithm"] == "adamax" and sd["state_dtype"] == "bfloat16"
    st = sd["state"][0]
    assert set(st) == {"step", "exp_avg", "exp_inf"} and st["exp_inf"].dtype == np.uint16
    assert_round_trips(opt, ps, lambda qs: fa.Adamax(qs, lr=1e-2, weight_decay=0.01,
                                                     state_dtype="bfloat16"),
                       tmp_path / "ck.npz", rng)


def test_cross_layout_refused_then_converted():
    from fastadam import lowp
    rng = np.random.default_rng(9)
    ps = params()
    f32 = fa.Adamax([p.copy() for p in ps], lr=1e-2)
    bf = fa.Adamax([p.copy() for p in ps], lr=1e-2, state_dtype="bfloat16")
    step_both(f32, bf, ps, rng)
    sd32, sdbf = assert_cross_layout_refused(f32, bf)
    adam_sd = fa.Adam([p.copy() for p in ps], state_dtype="bfloat16").state_dict()
    with pytest.raises(ValueError, match="'adam' optimizer, not 'adamax'"):
        bf.load_state_dict(adam_sd)
    with pytest.raises(ValueError, match="int8"):
        lowp.convert_state_dict(sd32, state_dtype="int8")
    # float32 -> bfloat16 rounds to nearest even; bfloat16 -> float32 decodes exactly
    bf.load_state_dict(lowp.convert_state_dict(sd32, state_dtype="bfloat16"))
    for k in ("exp_avg", "exp_inf"):
        a32 = sd32["state"][0][k].reshape(-1)
        assert np.array_equal(bf.state[0][k], a32.astype(BF))
    back = lowp.convert_state_dict(bf.state_dict(), state_dtype="float32",
                                   shapes=[p.shape for p in ps])
    f32.load_state_dict(back)
    assert np.array_equal(f32.state[0]["exp_inf"].reshape(-1),
                          bf.state[0]["exp_inf"].astype(np.float32))


def test_nonfinite_policies_and_bad_input_change_nothing():
    rng = np.random.default_rng(10)
    ps = params()
    for policy in ("skip", "raise"):
        opt = fa.Adamax(ps, lr=1e-2, nonfinite=policy, state_dtype="bfloat16")
        opt.step(grads_like(ps, rng))
        before = snap(opt, ps)
        gs = grads_like(ps, rng)
        gs[1][2] = np.inf
        if policy == "skip":
            opt.step(gs)
            assert opt.skipped_steps == 1
            opt.skipped_steps = 0
        else:
            with pytest.raises(ValueError, match=r"grads\[1\]"):
                opt.step(gs)
        assert snap(opt, ps) == before
    gs = grads_like(ps, rng)
    with pytest.raises(TypeError, match=r"grads\[2\]"):
        opt.step(gs[:2] + [gs[2].astype(np.float64)])
    with pytest.raises(ValueError, match=r"grads\[1\]"):            # aliases the state
        opt.step([gs[0], opt.state[0]["exp_inf"].view(np.float32)[:5], gs[2]])
    opt.param_groups[0]["eps"] = -1.0
    with pytest.raises(ValueError, match="eps"):
        opt.step(gs)
    opt.param_groups[0]["eps"] = 1e-8
    sd = opt.state_dict()
    sd["state"][1]["exp_inf"] = sd["state"][1]["exp_inf"][:-1]
    with pytest.raises(ValueError, match=r"\[1\]\['exp_inf'\]"):
        opt.load_state_dict(sd)
    assert snap(opt, ps) == before
    opt.step(gs)                                             # and it still steps
    assert snap(opt, ps) != before


def test_refusals():
    ps = params()
    before = [p.copy() for p in ps]
    with pytest.raises(ValueError, match="state_dtype='int8' is not available for 'adamax'"):
        fa.Adamax(ps, state_dtype="int8")
    with pytest.raises(ValueError, match="average"):
        fa.Adamax(ps, state_dtype="bfloat16", average=0.99)
    with pytest.raises(ValueError, match="master_weights"):
        fa.Adamax(ps, state_dtype="bfloat16", master_weights=True)   # float32 params
    with pytest.raises(ValueError, match="int8"):
        fa.Adamax([p.astype(BF) for p in ps], state_dtype="int8")
    assert all(np.array_equal(p, q) for p, q in zip(ps, before))
