"""Adam/AdamW with state_dtype="bfloat16"/"int8": the optimizer object over the
low-precision kernels. Held bit for bit to fastadam.lowp.adam_step_lowp (itself tested
against the rounding-aware reference in test_lowp.py)."""
import copy

import ml_dtypes
import numpy as np
import pytest

import fastadam as fa
from fastadam import lowp
from lowp_helpers import (assert_cross_layout_refused, assert_round_trips, grads_like, params, snap,
                          step_both)

BF = np.dtype(ml_dtypes.bfloat16)
LOWP = ("bfloat16", "int8")


@pytest.mark.parametrize("state_dtype", LOWP)
@pytest.mark.parametrize("cls,kw,fkw", [
    (fa.Adam, {}, {}),
    (fa.Adam, {"weight_decay": 0.1, "maximize": True}, {"weight_decay": 0.1, "maximize": True}),
    (fa.AdamW, {"weight_decay": 0.05, "eps_mode": "hat"},
     {"weight_decay": 0.05, "decoupled_weight_decay": True, "eps_mode": "hat"}),
    (fa.Adam, {"bias_correction": False}, {"bias_correction": False}),
])
def test_matches_functional_bit_for_bit(state_dtype, cls, kw, fkw):
    rng = np.random.default_rng(1)
    ps = params()
    ref = [p.reshape(-1).copy() for p in ps]
    opt = cls(ps, lr=3e-3, state_dtype=state_dtype, **kw)
    sts = [lowp.init_lowp_state(r, state_dtype=state_dtype) for r in ref]
    for t in range(1, 6):
        gs = grads_like(ps, rng)
        if t % 2:
            opt.step(gs)
        else:                         # through the preallocated gradients
            for dst, g in zip(opt.grads, gs):
                dst[...] = g
            opt.step()
        for r, g, st in zip(ref, gs, sts):
            lowp.adam_step_lowp(r, g.reshape(-1), st, step=t, lr=3e-3, **fkw)
    for p, r in zip(ps, ref):
        assert np.array_equal(p.reshape(-1), r)
    for i, st in enumerate(sts):
        live = opt.state[i]
        assert live["step"] == 5
        for k, a in st.items():
            assert live[k].dtype == a.dtype
            assert np.array_equal(live[k].view(np.uint8), a.view(np.uint8))


@pytest.mark.parametrize("state_dtype", LOWP)
def test_param_group_edits_and_schedule(state_dtype):
    rng = np.random.default_rng(2)
    ps = params()
    ref = [p.reshape(-1).copy() for p in ps]
    opt = fa.Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 1e-2, "weight_decay": 0.1}],
                  lr=1e-3, state_dtype=state_dtype)
    sts = [lowp.init_lowp_state(r, state_dtype=state_dtype) for r in ref]
    for t in range(1, 5):
        lr0 = 1e-3 * 0.5 ** t
        opt.param_groups[0]["lr"] = lr0
        if t == 3:
            opt.param_groups[1]["betas"] = (0.8, 0.99)
        gs = grads_like(ps, rng)
        opt.step(gs)
        for i, (r, g, st) in enumerate(zip(ref, gs, sts)):
            kw = ({"lr": lr0} if i < 2 else
                  {"lr": 1e-2, "weight_decay": 0.1,
                   "betas": (0.8, 0.99) if t >= 3 else (0.9, 0.999)})
            lowp.adam_step_lowp(r, g.reshape(-1), st, step=t, **kw)
    for p, r in zip(ps, ref):
        assert np.array_equal(p.reshape(-1), r)


@pytest.mark.parametrize("state_dtype", LOWP)
def test_clipping_as_prescaled_gradient(state_dtype):
    rng = np.random.default_rng(3)
    ps = params()
    ref = [p.reshape(-1).copy() for p in ps]
    opt = fa.Adam(ps, lr=1e-2, max_grad_norm=0.5, state_dtype=state_dtype)
    sts = [lowp.init_lowp_state(r, state_dtype=state_dtype) for r in ref]
    for t in range(1, 4):
        gs = grads_like(ps, rng)
        opt.step(gs)
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in gs))
        assert opt.last_grad_norms[0] == pytest.approx(norm, rel=1e-12)
        clip = np.float32(min(1.0, 0.5 / (norm + 1e-6)))
        for r, g, st in zip(ref, gs, sts):
            lowp.adam_step_lowp(r, (g * clip).reshape(-1), st, step=t, lr=1e-2)
    for p, r in zip(ps, ref):
        assert np.array_equal(p.reshape(-1), r)


@pytest.mark.parametrize("state_dtype", LOWP)
def test_nonfinite_skip_and_raise(state_dtype):
    rng = np.random.default_rng(4)
    ps = params()
    for policy in ("skip", "raise"):
        opt = fa.Adam(ps, lr=1e-2, nonfinite=policy, state_dtype=state_dtype)
        opt.step(grads_like(ps, rng))
        before = snap(opt, ps)
        gs = grads_like(ps, rng)
        gs[1][2] = np.nan
        if policy == "skip":
            opt.step(gs)
            assert opt.skipped_steps == 1
            after = snap(opt, ps)
            assert after[len(ps)] == 1                  # skipped_steps
            after[len(ps)] = 0
            assert after == before
        else:
            with pytest.raises(ValueError, match=r"grads\[1\]"):
                opt.step(gs)
            assert snap(opt, ps) == before


@pytest.mark.parametrize("state_dtype", LOWP)
def test_state_dict_round_trip_exact(state_dtype, tmp_path):
    rng = np.random.default_rng(5)
    ps = params()
    opt = fa.AdamW(ps, lr=1e-2, state_dtype=state_dtype)
    for _ in range(3):
        opt.step(grads_like(ps, rng))
    sd = opt.state_dict()
    assert sd["state_dtype"] == state_dtype
    assert sd["state_layout"] == lowp_layout(state_dtype)
    st = sd["state"][0]
    if state_dtype == "bfloat16":
        assert st["exp_avg"].dtype == np.uint16 and st["exp_avg_sq"].dtype == np.uint16
        assert np.array_equal(st["exp_avg"], opt.state[0]["exp_avg"].view(np.uint16))
    else:
        assert st["exp_avg"].dtype == np.int8 and st["exp_avg_sq"].dtype == np.uint8
        assert st["exp_avg_absmax"].dtype == np.float32
        assert st["exp_avg_absmax"].shape == (lowp.q8_blocks(ps[0].size),)
    assert_round_trips(opt, ps, lambda qs: fa.AdamW(qs, lr=1e-2, state_dtype=state_dtype),
                       tmp_path / "ck.npz", rng)


def lowp_layout(state_dtype):
    from fastadam.optim.lowp import layout_name
    return layout_name(state_dtype)


@pytest.mark.parametrize("state_dtype", LOWP)
def test_cross_layout_refused_then_converted(state_dtype):
    rng = np.random.default_rng(6)
    ps = params()
    f32 = fa.Adam([p.copy() for p in ps], lr=1e-2)
    lp = fa.Adam([p.copy() for p in ps], lr=1e-2, state_dtype=state_dtype)
    step_both(f32, lp, ps, rng)
    sd32, sdlp = assert_cross_layout_refused(f32, lp)
    other = "int8" if state_dtype == "bfloat16" else "bfloat16"
    with pytest.raises(ValueError, match="state_dtype"):
        fa.Adam([p.copy() for p in ps], state_dtype=other).load_state_dict(sdlp)
    # explicit conversion: fp32 -> lowp decodes to within the format's rounding
    lp.load_state_dict(lowp.convert_state_dict(sd32, state_dtype=state_dtype))
    m, v = lowp.decode_state(lp.state[0])
    m32 = sd32["state"][0]["exp_avg"].reshape(-1)
    tol = 2.0 ** -8 if state_dtype == "bfloat16" else 0.1
    assert np.max(np.abs(m - m32)) <= tol * np.max(np.abs(m32))
    # lowp -> fp32 is exact decoding; and back gives the same codes
    back = lowp.convert_state_dict(lp.state_dict(), state_dtype="float32",
                                   shapes=[p.shape for p in ps])
    f32.load_state_dict(back)
    assert np.array_equal(f32.state[0]["exp_avg"].reshape(-1), m)
    again = lowp.convert_state_dict(back, state_dtype=state_dtype)
    for k, a in lp.state_dict()["state"][0].items():
        if k != "step":
            assert np.array_equal(again["state"][0][k], a)
    with pytest.raises(ValueError, match="shapes"):
        lowp.convert_state_dict(sdlp, state_dtype="float32")
    with pytest.raises(ValueError, match="state_dtype"):
        lowp.convert_state_dict(sdlp, state_dtype="fp8")


@pytest.mark.parametrize("state_dtype", LOWP)
def test_bad_state_dict_leaves_state(state_dtype):
    rng = np.random.default_rng(7)
    ps = params()
    opt = fa.Adam(ps, lr=1e-2, state_dtype=state_dtype)
    opt.step(grads_like(ps, rng))
    sd = opt.state_dict()
    opt.step(grads_like(ps, rng))
    before = snap(opt, ps)
    bad = copy.deepcopy(sd)
    bad["state"][2]["exp_avg"] = bad["state"][2]["exp_avg"].astype(np.float32)
    with pytest.raises(TypeError, match=r"\[2\]\['exp_avg'\]"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(sd)
    bad["state"][1]["exp_avg_sq"] = bad["state"][1]["exp_avg_sq"][:-1]
    with pytest.raises(ValueError, match=r"\[1\]\['exp_avg_sq'\]"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(sd)
    bad["param_groups"][0]["amsgrad"] = True
    with pytest.raises(ValueError, match="amsgrad"):
        opt.load_state_dict(bad)
    assert snap(opt, ps) == before


def test_refusals_name_the_argument():
    ps = params()
    with pytest.raises(ValueError, match="state_dtype"):
        fa.Adam(ps, state_dtype="float16")
    with pytest.raises(ValueError, match="state_dtype"):
        fa.Adam(ps, state_dtype=8)
    with pytest.raises(ValueError, match="amsgrad"):
        fa.Adam(ps, amsgrad=True, state_dtype="int8")
    with pytest.raises(ValueError, match="average"):
        fa.AdamW(ps, average=0.999, state_dtype="bfloat16")
    with pytest.raises(ValueError, match="amsgrad"):
        fa.Adam([{"params": ps[:1]}, {"params": ps[1:], "amsgrad": True}],
                state_dtype="bfloat16")
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[1\].*float32"):
        fa.Adam([ps[0], ps[1].astype(np.float64)], state_dtype="int8")
    with pytest.raises(TypeError, match="state_dtype='float32'"):
        fa.Adam([ps[0].astype(np.float64)], state_dtype="float32")
    with pytest.raises(ValueError, match="state_dtype='int8' is not available for 'adamax'"):
        fa.Adamax(ps, state_dtype="int8")
    with pytest.raises(ValueError, match="state_dtype='int8' is not available for 'radam'"):
        fa.RAdam(ps, state_dtype="int8")


@pytest.mark.parametrize("cls", [fa.Adamax, fa.NAdam, fa.RAdam])
def test_other_algorithms_take_float32_state_and_refuse_low_precision(cls):
    # Adamax, NAdam and RAdam take "bfloat16" (test_lowp_adamax.py, test_lowp_nr.py),
    # NAdam "int8" too (test_lowp_nr16.py); Adamax and RAdam refuse "int8", naming
    # state_dtype (parameters untouched); None and "float32" are their ordinary float32
    # path, step for step the same.
    ps = params()
    before = [p.copy() for p in ps]
    for sdt in LOWP:
        if sdt == "bfloat16" or (sdt == "int8" and cls is fa.NAdam):
            assert cls(ps, state_dtype=sdt).state_dtype == sdt
            continue
        match = rf"state_dtype='{sdt}' is not available for '{cls.algorithm}'"
        with pytest.raises(ValueError, match=match):
            cls(ps, state_dtype=sdt)
    assert all(np.array_equal(p, q) for p, q in zip(ps, before))
    with pytest.raises(ValueError, match="state_dtype"):
        cls(ps, state_dtype="float16")
    with pytest.raises(TypeError, match="state_dtype='float32'"):
        cls([p.astype(np.float64) for p in ps], state_dtype="float32")
    qs = [p.copy() for p in ps]
    a, b = cls(ps, lr=1e-2, state_dtype="float32"), cls(qs, lr=1e-2)
    assert a.state_dtype == "float32" and b.state_dtype is None
    rng = np.random.default_rng(3)
    for _ in range(3):
        g = grads_like(ps, rng)
        a.step(g)
        b.step([x.copy() for x in g])
    assert all(np.array_equal(p, q) for p, q in zip(ps, qs))
    assert a.state_bytes() == b.state_bytes() == 8.0


@pytest.mark.parametrize("state_dtype", LOWP)
def test_bad_step_input_changes_nothing(state_dtype):
    rng = np.random.default_rng(8)
    ps = params()
    opt = fa.Adam(ps, lr=1e-2, state_dtype=state_dtype)
    opt.step(grads_like(ps, rng))
    before = snap(opt, ps)
    gs = grads_like(ps, rng)
    with pytest.raises(TypeError, match=r"grads\[2\]"):
        opt.step(gs[:2] + [gs[2].astype(np.float64)])
    with pytest.raises(ValueError, match="grads has 2"):
        opt.step(gs[:2])
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        opt.step([gs[0], ps[0].reshape(-1)[:5], gs[2]])     # aliases a parameter
    alias = opt.state[0]["exp_avg"].view(np.uint8)[:ps[1].nbytes].view(np.float32)
    with pytest.raises(ValueError, match=r"grads\[1\]"):     # aliases the lowp state
        opt.step([gs[0], alias, gs[2]])
    opt.param_groups[0]["amsgrad"] = True
    with pytest.raises(ValueError, match="amsgrad"):
        opt.step(gs)
    opt.param_groups[0]["amsgrad"] = False
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step(gs)
    opt.param_groups[0]["lr"] = 1e-2
    assert snap(opt, ps) == before
    opt.step(gs)                                       # and it still steps
    assert not np.array_equal(before[0][0], ps[0])


@pytest.mark.parametrize("state_dtype", LOWP)
def test_add_param_group_keeps_state(state_dtype):
    rng = np.random.default_rng(9)
    ps = params()
    opt = fa.Adam(ps[:2], lr=1e-2, state_dtype=state_dtype)
    opt.step(grads_like(ps[:2], rng))
    before = opt.state_dict()["state"]
    opt.add_param_group({"params": [ps[2]], "lr": 1e-3})
    sd = opt.state_dict()
    for i in (0, 1):
        for k, a in before[i].items():
            assert np.array_equal(np.asarray(sd["state"][i][k]), np.asarray(a))
    assert sd["state"][2]["step"] == 0
    with pytest.raises(TypeError, match="float32"):
        opt.add_param_group({"params": [np.zeros(3)]})
    with pytest.raises(ValueError, match="amsgrad"):
        opt.add_param_group({"params": [np.zeros(3, np.float32)], "amsgrad": True})
    assert len(opt.param_groups) == 2
    opt.step(grads_like(ps, rng))


def test_state_bytes():
    ps = params(shapes=((4096,),))
    assert fa.Adam(ps).state_bytes() == pytest.approx(8.0, abs=0.1)
    assert fa.Adam(ps, state_dtype="bfloat16").state_bytes() == 4.0
    q8 = fa.Adam(ps, state_dtype="int8").state_bytes()
    assert q8 == pytest.approx(2.0 + 8.0 / 256)
    assert fa.Adam(ps, amsgrad=True).state_bytes() == pytest.approx(12.0, abs=0.1)


def test_float32_state_dtype_is_the_ordinary_path():
    rng = np.random.default_rng(10)
    ps = params()
    qs = [p.copy() for p in ps]
    a, b = fa.Adam(ps, lr=1e-2), fa.Adam(qs, lr=1e-2, state_dtype="float32")
    assert b._lowp is None and b.state_dtype == "float32"
    for _ in range(3):
        g = grads_like(ps, rng)
        a.step(g)
        b.step(g)
    assert all(np.array_equal(x, y) for x, y in zip(ps, qs))
    b.load_state_dict(a.state_dict())


def test_bench_state_rows_structure():
    from fastadam import bench, bench_report
    res = bench.state_rows(["int8", "bfloat16"], sizes=[1000], quick=True)
    rows = res["rows"]
    assert [r["state_dtype"] for r in rows] == ["float32", "int8", "bfloat16"]
    assert [r["state_bytes_per_param"] for r in rows] == [8.0, 2.0 + 2 * 4 * 4 / 1000, 4.0]   # 4 blocks, 2 scales
    assert "x fp32" in bench_report.format_state_rows(res)


def test_cli_state_flag_refuses_unknown():
    from fastadam import cli
    assert cli.main(["bench", "--state", "fp8"]) == 2


# Every precision mode with at least two state layouts and every state layout with at
# least two modes (each pair compiles its own kernel: the full product doubled the cost).
_BF16_CASES = [(None, {}), ("int8", {}),
               (None, {"rounding": "stochastic", "seed": 7}),
               ("float32", {"rounding": "stochastic", "seed": 7}),
               ("float32", {"compensation": True}), ("int8", {"compensation": True}),
               (None, {"master_weights": True}), ("int8", {"master_weights": True})]


@pytest.mark.parametrize("state_dtype,mode", _BF16_CASES,
                         ids=[f"{s}-{'-'.join(m) or 'nearest'}" for s, m in _BF16_CASES])
def test_bfloat16_params_match_functional(state_dtype, mode, tmp_path):
    rng = np.random.default_rng(11)
    ps = [p.astype(BF) for p in params()]
    ref = [p.reshape(-1).copy() for p in ps]
    opt = fa.AdamW(ps, lr=1e-2, weight_decay=0.01, max_grad_norm=1.0,
                   state_dtype=state_dtype, **mode)
    init = {k: v for k, v in mode.items() if k in ("compensation", "master_weights")}
    step_kw = {k: v for k, v in mode.items() if k in ("rounding", "seed")}
    sts = [lowp.init_lowp_state(r, state_dtype=state_dtype or "bfloat16", **init) for r in ref]
    for t in range(1, 4):
        gs = [g.astype(BF) for g in grads_like(ps, rng)]
        opt.step(gs)
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in gs))
        clip = np.float32(min(1.0, 1.0 / (norm + 1e-6)))
        for r, g, st in zip(ref, gs, sts):
            gc = (g.astype(np.float32) * clip).astype(BF) if clip != 1 else g
            lowp.adam_step_lowp(r, gc.reshape(-1), st, step=t, lr=1e-2, weight_decay=0.01,
                                decoupled_weight_decay=True, **step_kw)
    for p, r in zip(ps, ref):
        assert np.array_equal(p.reshape(-1).view(np.uint16), r.view(np.uint16))
    sd = opt.state_dict()
    assert sd["state_dtype"] == (state_dtype or "bfloat16")
    if mode.get("master_weights"):
        assert sd["state"][0]["master"].dtype == np.float32
    if mode.get("compensation"):
        assert sd["state"][0]["compensation"].dtype == np.uint16
    opt.save(tmp_path / "bf.npz")
    qs = [p.copy() for p in ps]
    o2 = fa.AdamW(qs, lr=1e-2, weight_decay=0.01, max_grad_norm=1.0,
                  state_dtype=state_dtype, **mode)
    o2.load(tmp_path / "bf.npz")
    o3 = copy.deepcopy(opt)
    g = [x.astype(BF) for x in grads_like(ps, rng)]
    for o in (opt, o2, o3):
        o.step([x.copy() for x in g])
    q3 = o3.param_groups[0]["params"]
    assert snap(opt, ps) == snap(o2, qs)
    assert snap(opt, ps) == snap(o3, q3)


def test_bfloat16_param_refusals():
    ps = params()
    bs = [p.astype(BF) for p in ps]
    with pytest.raises(ValueError, match="master_weights"):
        fa.Adam(ps, master_weights=True)
    with pytest.raises(ValueError, match="compensation"):
        fa.Adam(ps, state_dtype="int8", compensation=True)
    with pytest.raises(ValueError, match="rounding"):
        fa.Adam(ps, rounding="stochastic")
    with pytest.raises(ValueError, match="rounding"):
        fa.Adam(bs, rounding="up")
    with pytest.raises(ValueError, match="choose one"):
        fa.Adam(bs, master_weights=True, compensation=True)
    with pytest.raises(ValueError, match="stochastic"):
        fa.Adam(bs, master_weights=True, rounding="stochastic")
    with pytest.raises(TypeError, match="seed"):
        fa.Adam(bs, rounding="stochastic", seed=1.5)
    with pytest.raises(TypeError, match="bfloat16"):
        fa.Adam([ps[0], bs[1]])
    with pytest.raises(ValueError, match="average"):
        fa.Adam(bs, average=0.99)
    with pytest.raises(ValueError, match="amsgrad"):
        fa.Adam(bs, amsgrad=True)
    opt = fa.Adam(bs[:1], lr=1e-2)
    with pytest.raises(TypeError, match="bfloat16"):
        opt.add_param_group({"params": [np.zeros(3, np.float32)]})
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        opt.step([np.zeros(bs[0].shape, np.float32)])


CACHED = [(fa.Adam, "bfloat16"), (fa.Adam, "int8"), (fa.Adamax, "bfloat16")]


@pytest.mark.parametrize("cls,state_dtype", CACHED)
def test_bad_gradients_after_a_kept_launch(cls, state_dtype):
    """The step keeps its checked launches between steps; the gradients are checked at
    every step all the same: one list whose entries are replaced between steps, and the
    preallocated opt.grads with entries replaced, each refused with nothing changed."""
    rng = np.random.default_rng(11)
    ps = params()
    opt = cls(ps, lr=1e-2, state_dtype=state_dtype)
    gs = grads_like(ps, rng)
    opt.step(gs)
    opt.step(gs)                                       # the same list, kept launches
    before = snap(opt, ps)
    good = list(gs)
    alias_state = opt.state[0]["exp_avg"].view(np.uint8)[:ps[2].nbytes].view(np.float32)
    bad = [(1, ps[1], ValueError, r"grads\[1\]"),                    # the parameter
           (2, alias_state.reshape(ps[2].shape), ValueError, r"grads\[2\]"),   # lowp state
           (0, gs[0][:3], ValueError, r"grads\[0\]"),                     # shape
           (2, gs[2].astype(np.float64), TypeError, r"grads\[2\]"),
           (0, np.asfortranarray(gs[0]), ValueError, r"grads\[0\]"),
           (1, [0.0] * 5, TypeError, r"grads\[1\]")]
    for i, g, exc, match in bad:
        gs[i] = g
        with pytest.raises(exc, match=match):
            opt.step(gs)
        gs[i] = good[i]
        assert snap(opt, ps) == before
    own = list(opt.grads)
    for i, g, exc, match in bad:
        opt.grads[i] = g
        with pytest.raises(exc, match=match):
            opt.step()
        opt.grads[i] = own[i]
        assert snap(opt, ps) == before
    for g, o in zip(good, own):
        o[...] = g
    ref = cls(params(), lr=1e-2, state_dtype=state_dtype)     # both steps kept going
    ref.load_state_dict(opt.state_dict())
    ref_ps = [p.copy() for p in ps]
    for p, q in zip(ref._params, ref_ps):
        p[...] = q
    opt.step()
    ref.step([g.copy() for g in good])
    assert all(np.array_equal(p, q) for p, q in zip(ps, ref._params))


@pytest.mark.parametrize("cls,state_dtype", CACHED)
def test_read_only_arrays_after_a_kept_launch(cls, state_dtype):
    """A parameter or state array made read-only after launches were kept: ValueError
    naming it, and no parameter stepped (not even those before it)."""
    rng = np.random.default_rng(12)
    ps = params()
    opt = cls(ps, lr=1e-2, state_dtype=state_dtype)
    gs = grads_like(ps, rng)
    opt.step(gs)
    before = snap(opt, ps)
    ps[2].flags.writeable = False
    with pytest.raises(ValueError, match=r"parameter 2 .*read-only"):
        opt.step(gs)
    ps[2].flags.writeable = True
    assert snap(opt, ps) == before
    st = opt.state[1]["exp_avg"]
    st.flags.writeable = False
    with pytest.raises(ValueError, match=r"parameter 1 .*exp_avg.*read-only"):
        opt.step(gs)
    st.flags.writeable = True
    assert snap(opt, ps) == before
    opt.step(gs)
    assert not np.array_equal(before[0][0], ps[0])


@pytest.mark.parametrize("cls,state_dtype", CACHED)
def test_kept_launches_follow_groups_state_and_new_params(cls, state_dtype):
    """Kept launches are rebuilt when what they were built from changes: an lr edit, a
    weight_decay/maximize edit (another kernel), a loaded state_dict, an added group. Each step matches a fresh optimizer (no kept
    launch) given the same state, bit for bit."""
    rng = np.random.default_rng(13)
    ps = params()
    opt = cls(ps, lr=1e-2, state_dtype=state_dtype)

    def fresh_step(g):
        qs = [p.copy() for p in ps]
        ref = cls([{"params": qs[lo:hi]} for lo, hi in bounds], lr=1e-2,
                  state_dtype=state_dtype)
        ref.load_state_dict(opt.state_dict())
        ref.step([x.copy() for x in g])
        return qs

    bounds = [(0, 3)]
    gs = grads_like(ps, rng)
    opt.step(gs)
    for edit in ("lr", "kernel", "load", "group"):
        if edit == "lr":
            opt.param_groups[0]["lr"] = 3e-3
        elif edit == "kernel":                        # another kernel, same arrays
            opt.param_groups[0]["weight_decay"] = 0.1
            opt.param_groups[0]["maximize"] = True
        elif edit == "load":
            other = cls(params(seed=5), lr=2e-3, state_dtype=state_dtype)
            for _ in range(3):
                other.step(grads_like(ps, rng))
            opt.load_state_dict(other.state_dict())
        else:
            extra = rng.standard_normal(9).astype(np.float32)
            opt.add_param_group({"params": [extra]})
            ps.append(extra)
            bounds = [(0, 3), (3, 4)]
        gs = grads_like(ps, rng)
        want = fresh_step(gs)
        opt.step(gs)
        assert all(np.array_equal(p, q) for p, q in zip(ps, want)), edit
