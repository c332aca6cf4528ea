"""Hypothesis fuzzing of the functional and object APIs: every call either succeeds with
results equal to the float64 reference (tests/reference.py, tolerances of
test_functional.py / test_optimizer.py) or raises TypeError/ValueError with parameters
and state unchanged.

Budget: profile "ci" (default) runs a few thousand cases in well under a minute; select
``HYPOTHESIS_PROFILE=thorough`` for ten times more. The number of cases run is printed
at the end of the module ("fuzz cases run: ...")."""
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, initialize, invariant,
                                 precondition, rule)

import fastadam as fa
from reference import adam_error_scale, adam_reference

settings.register_profile("ci", max_examples=1500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=15000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
SCALE = 10 if PROFILE == "thorough" else 1
COUNTS = {"adam_step calls": 0, "optimizer machines": 0, "optimizer operations": 0}


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    """Print how many fuzz cases ran, past pytest's output capture."""
    yield
    text = ("fuzz cases run: " + ", ".join(f"{v} {k}" for k, v in COUNTS.items())
            + f" (total {sum(v for k, v in COUNTS.items() if k != 'optimizer machines')})")
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            print("\n" + text)
    else:
        print(text)


ERRORS = (TypeError, ValueError)
FLOATS = (np.float32, np.float64)


def close(dtype, got, want, tol, err=""):
    """One step's result against the float64 reference with test_functional.py's
    tolerances (float32: a few ulp of each term; float64: 1e-12 of the array's scale).
    NaN where and only where the reference is NaN; equal infinities."""
    got64 = np.asarray(got, np.float64)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got64), nan, err_msg=f"{err}: NaN pattern")
    inf = np.isinf(want)
    np.testing.assert_array_equal(got64[inf], want[inf], err_msg=f"{err}: infinities")
    ok = ~(nan | inf)
    if dtype == np.float64:
        np.testing.assert_allclose(got64[ok], want[ok], rtol=1e-12,
                                   atol=1e-12 * np.abs(want[ok]).max(initial=0), err_msg=err)
        return
    np.testing.assert_array_less(np.abs(got64[ok] - want[ok]), tol[ok] + 1e-45, err_msg=err)


def step_tolerances(p, g, m, v, rp, rm, hyper):
    """float32 bounds (float64 arrays) for param, exp_avg, exp_avg_sq of one step."""
    u = np.finfo(np.float32).eps
    with np.errstate(all="ignore"):
        m_terms, v_terms = adam_error_scale(p, g, m, v, betas=hyper["betas"],
                                            weight_decay=hyper["weight_decay"])
        p0 = np.asarray(p, np.float64)
        # The result is (p * decay) - update, each rounded once: the bound scales with the
        # decayed parameter (decay = 1 - lr * weight_decay, which is large when lr is).
        pd = p0 * (1.0 - hyper["lr"] * hyper["weight_decay"]) if hyper.get("decoupled") else p0
        delta = np.abs(pd - rp)
        tol_p = 4 * u * (np.abs(pd) + delta) + 8 * u * delta * (1 + m_terms / (np.abs(rm) + 1e-300))
    return np.nan_to_num(tol_p, nan=np.inf), 4 * u * m_terms, 4 * u * v_terms


def check_step_result(dtype, before, after, ref, hyper, amsgrad):
    p, g, m, v, vmax = before
    rp, rm, rv, rvmax = ref
    if dtype == np.float32:
        tp, tm, tv = step_tolerances(p, g, m, v, rp, rm, hyper)
    else:
        tp = tm = tv = None
    names = ["param", "exp_avg", "exp_avg_sq"]
    for name, got, want, tol in zip(names, after[:3], (rp, rm, rv), (tp, tm, tv)):
        close(dtype, got, want, tol, err=name)
    if amsgrad:
        close(dtype, after[3], rvmax, tv, err="max_exp_avg_sq")


# ------------------------------------------------------------------ functional API
VALID_LR = [0.0, 1e-3, 0.1, 1.0, 1e3]
BAD_LR = [float("nan"), float("inf"), -1.0, -1e-300, "0.1", None, True, 1j, [0.1]]
VALID_BETAS = [(0.9, 0.999), (0.0, 0.0), (0.5, 0.9999999), [0.8, 0.99], (np.float32(0.9), 0.999)]
BAD_BETAS = [(1.0, 0.9), (0.9, 1.0), (-0.1, 0.9), (float("nan"), 0.9), (0.9, float("inf")),
             (0.9,), (0.9, 0.99, 0.9), "ab", None, 0.9, (0.9, "x")]
VALID_EPS = [1e-8, 0.0, 1.0, 1e-30, 1e3]
BAD_EPS = [-1e-8, float("nan"), float("inf"), "1e-8", None]
VALID_WD = [0.0, 0.01, 0.5]
BAD_WD = [-0.1, float("inf"), float("nan"), "0", None]
VALID_STEP = [1, 2, 10, 1000, 10**6, 2**31, 2**62, np.int64(5), np.int32(3)]
# Steps >= 2**63 are left out: see test_step_beyond_int64_is_a_value_error (core bug).
BAD_STEP = [0, -1, -2**63, 1.0, 2.5, "1", None, True, np.float64(1.0)]
VALID_FLAG = [True, False, np.True_, np.False_]
BAD_FLAG = [0, 1, "True", None, 1.0]
VALID_MODE = ["paper", "hat"]
BAD_MODE = ["Paper", "tf", "", None, 0]


def maybe_bad(valid, bad, p_bad=0.06):
    """(value, is_valid): mostly valid values, sometimes a bad one."""
    return st.integers(0, 999).flatmap(
        lambda r: st.sampled_from(bad).map(lambda x: (x, False)) if r < p_bad * 1000
        else st.sampled_from(valid).map(lambda x: (x, True)))


# How each array of an adam_step call is made: mostly right, sometimes wrong.
ARRAY_KINDS = ["ok"] * 12 + ["alias", "overlap", "noncontig", "readonly", "dtype", "shape",
                             "2d", "list"]
BAD_DTYPES = [np.int64, np.float16, np.complex128, np.int32, np.bool_]


@st.composite
def adam_step_case(draw):
    n = draw(st.sampled_from([0, 1, 2, 3, 7, 16, 33, 100]))
    dtype = draw(st.sampled_from(FLOATS)) if draw(st.integers(0, 19)) else \
        draw(st.sampled_from(BAD_DTYPES))
    kinds = {k: draw(st.sampled_from(ARRAY_KINDS)) for k in ("param", "grad", "exp_avg",
                                                            "exp_avg_sq", "max_exp_avg_sq")}
    kinds["param"] = kinds["param"] if kinds["param"] not in ("alias", "overlap") else "ok"
    hyper = {
        "lr": draw(maybe_bad(VALID_LR, BAD_LR)),
        "betas": draw(maybe_bad(VALID_BETAS, BAD_BETAS)),
        "eps": draw(maybe_bad(VALID_EPS, BAD_EPS)),
        "weight_decay": draw(maybe_bad(VALID_WD, BAD_WD)),
        "step": draw(maybe_bad(VALID_STEP, BAD_STEP)),
        "decoupled_weight_decay": draw(maybe_bad(VALID_FLAG, BAD_FLAG, 0.03)),
        "amsgrad": draw(maybe_bad(VALID_FLAG, BAD_FLAG, 0.03)),
        "maximize": draw(maybe_bad(VALID_FLAG, BAD_FLAG, 0.03)),
        "bias_correction": draw(maybe_bad(VALID_FLAG, BAD_FLAG, 0.03)),
        "eps_mode": draw(maybe_bad(VALID_MODE, BAD_MODE, 0.03)),
    }
    specials = draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0]),
                             max_size=3))
    seed = draw(st.integers(0, 2**32 - 1))
    pass_vmax = draw(st.integers(0, 9)) > 0
    return n, dtype, kinds, hyper, specials, seed, pass_vmax


def build_arrays(n, dtype, kinds, rng, specials):
    """The five arrays; those of kind alias/overlap live in one shared buffer with the
    param. Returns (arrays dict, valid)."""
    valid = np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.float64))
    shared = np.zeros(6 * n + 6, dtype=dtype if valid else np.float64)
    values = {
        "param": rng.standard_normal(n),
        "grad": rng.standard_normal(n),
        "exp_avg": 0.1 * rng.standard_normal(n),
        "exp_avg_sq": 0.01 * rng.random(n),
        "max_exp_avg_sq": 0.02 * rng.random(n),
    }
    if n:
        for i, s in enumerate(specials):
            values["grad"][rng.integers(n)] = s
    out = {}
    for name, kind in kinds.items():
        vals = values[name]
        if name == "param" and kind == "ok" and n:
            a = shared[:n]                   # param at the start of the shared buffer
            a[...] = vals
            out[name] = a if valid else vals.astype(dtype)
            continue
        if kind == "alias":
            a = out["param"] if isinstance(out.get("param"), np.ndarray) else np.zeros(n)
        elif kind == "overlap" and n:
            a = shared[n // 2 + 1: n // 2 + 1 + n] if n > 1 else shared[:1]
        elif kind == "noncontig" and n > 1:
            a = np.zeros(2 * n, dtype=dtype)[::2]
            a[...] = vals
        elif kind == "readonly":
            a = np.array(vals, dtype=dtype)
            a.flags.writeable = False
        elif kind == "dtype":
            a = vals.astype(np.float32 if np.dtype(dtype) == np.float64 else np.float64)
        elif kind == "shape":
            a = np.zeros(n + 1, dtype=dtype)
        elif kind == "2d":
            a = np.array(vals, dtype=dtype).reshape(n, 1)
        elif kind == "list":
            a = vals.tolist()
        else:
            a = np.array(vals, dtype=dtype)
        out[name] = a
    return out


def is_bad(name, kind, n):
    """Whether an array made as ``kind`` must be refused."""
    if kind == "ok" or (kind == "readonly" and name == "grad"):
        return False
    if kind in ("alias", "overlap") and n == 0:
        return False
    if kind == "noncontig" and n <= 1:
        return False
    return True


_SWAPPED_KINDS = {"param": "dtype", "grad": "dtype", "exp_avg": "dtype", "exp_avg_sq": "dtype",
                  "max_exp_avg_sq": "ok"}
_LONGER_KINDS = dict.fromkeys(_SWAPPED_KINDS, "shape")
_PLAIN_HYPER = {"lr": (1e-3, True), "betas": ((0.9, 0.999), True), "eps": (1e-8, True),
                "weight_decay": (0.0, True), "step": (1, True),
                "decoupled_weight_decay": (True, True), "amsgrad": (False, True),
                "maximize": (True, True), "bias_correction": (True, True),
                "eps_mode": ("paper", True)}


@settings(max_examples=1500 * SCALE)
@given(case=adam_step_case())
# every used array made in the other float dtype, or one element longer: valid calls the
# oracle once called invalid (found by this test); the last must raise (int64)
@example(case=(0, np.int64, _SWAPPED_KINDS, _PLAIN_HYPER, [], 0, False))
@example(case=(7, np.float32, _SWAPPED_KINDS, _PLAIN_HYPER, [], 1, False))
@example(case=(0, np.float32, _LONGER_KINDS, _PLAIN_HYPER, [], 0, False))
@example(case=(7, np.int64, _LONGER_KINDS, _PLAIN_HYPER, [], 2, False))
def test_adam_step_succeeds_like_the_reference_or_raises_changing_nothing(case):
    n, dtype, kinds, hyper, specials, seed, pass_vmax = case
    rng = np.random.default_rng(seed)
    arrays = build_arrays(n, dtype, kinds, rng, specials)
    kw = {k: v for k, (v, _) in hyper.items()}
    if not pass_vmax:
        arrays["max_exp_avg_sq"] = None
    names = ["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    before = {k: (np.array(a, copy=True) if isinstance(a, np.ndarray) else a)
              for k, a in arrays.items()}
    kw["max_exp_avg_sq"] = arrays["max_exp_avg_sq"]
    COUNTS["adam_step calls"] += 1
    try:
        with np.errstate(all="ignore"):
            fa.adam_step(arrays["param"], arrays["grad"], arrays["exp_avg"],
                         arrays["exp_avg_sq"], **kw)
    except ERRORS as e:
        note(f"raised {type(e).__name__}: {e}")
        for k in names:
            if isinstance(before[k], np.ndarray):
                assert np.array_equal(before[k], arrays[k], equal_nan=True), \
                    f"{k} changed although adam_step raised {e!r}"
        return
    # It succeeded: then the input must have been valid.
    amsgrad = bool(kw["amsgrad"])
    used = names[:4] + (["max_exp_avg_sq"] if amsgrad else [])
    assert all(ok for _, ok in hyper.values()), f"accepted invalid hyperparameters {hyper}"
    # "dtype" and "shape" arrays differ from an "ok" param only in dtype (the other float
    # dtype) or length (one more): when the param and every other array the call uses
    # were made the same such way, they agree and the call is valid on them as made.
    agree = kinds["param"] in ("dtype", "shape") and all(kinds[k] == kinds["param"]
                                                         for k in used)
    dtype = arrays["param"].dtype if agree else np.dtype(dtype)
    assert dtype in (np.dtype(np.float32), np.dtype(np.float64)), "accepted bad dtype"
    for k in used:
        if kinds[k] not in ("alias", "overlap") and not agree:
            assert not is_bad(k, kinds[k], n), f"accepted {k} made as {kinds[k]!r}"
    for i, a in enumerate(used):
        for b in used[i + 1:]:
            assert not np.shares_memory(arrays[a], arrays[b]), f"accepted {a} sharing {b}"
    assert not amsgrad or pass_vmax, "amsgrad=True accepted without max_exp_avg_sq"
    p, g, m, v = (before[k] for k in names[:4])
    vmax = before["max_exp_avg_sq"] if amsgrad else None
    h = {k: kw[k] for k in ("lr", "eps", "weight_decay", "maximize", "bias_correction",
                            "eps_mode")}
    h = dict(h, betas=tuple(float(b) for b in kw["betas"]), lr=float(kw["lr"]),
             maximize=bool(kw["maximize"]), bias_correction=bool(kw["bias_correction"]))
    with np.errstate(all="ignore"):
        ref = adam_reference(p, g, m, v, vmax, step=int(kw["step"]), amsgrad=amsgrad,
                             decoupled=bool(kw["decoupled_weight_decay"]), **h)
    after = [arrays[k] for k in ("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")]
    check_step_result(dtype.type, (p, g, m, v, vmax), after, ref,
                      dict(h, decoupled=bool(kw["decoupled_weight_decay"])), amsgrad)


# ------------------------------------------------------------------ optimizer objects
SHAPES = [(0,), (1,), (3,), (2, 3), (4, 1, 2), (17,)]
GROUP_EDITS = {
    "lr": ([0.0, 1e-3, 0.1, 1.0], [float("nan"), -1.0, float("inf"), "0.1", None]),
    "betas": ([(0.9, 0.999), (0.0, 0.0), [0.5, 0.99]], [(1.0, 0.9), (0.9,), (float("nan"), 0.9), "ab"]),
    "eps": ([1e-8, 0.0, 1.0], [-1e-8, float("nan")]),
    "weight_decay": ([0.0, 0.01, 0.5], [-0.1, float("inf")]),
    # 0/1 equal True/False but are not bools: rejected like any wrong type
    "amsgrad": ([True, False], ["True", None, 1, 0]),
    "maximize": ([True, False], ["no", None, 0]),
    "bias_correction": ([True, False], [None, 1]),
    "eps_mode": (["paper", "hat"], ["tf", None]),
}


class OptimizerMachine(RuleBasedStateMachine):
    """Random call orders on fa.Adam / fa.AdamW. The model is the last verified state;
    each step is checked against the reference from that state, each failed call
    against the model exactly (nothing may change)."""

    snapshots = Bundle("snapshots")

    @initialize(cls=st.sampled_from([fa.Adam, fa.AdamW]),
                specs=st.lists(st.tuples(st.sampled_from(SHAPES), st.sampled_from(FLOATS),
                                         st.integers(0, 1)), min_size=1, max_size=4),
                seed=st.integers(0, 2**32 - 1), lr=st.sampled_from([1e-3, 0.1]))
    def build(self, cls, specs, seed, lr):
        COUNTS["optimizer machines"] += 1
        self.rng = np.random.default_rng(seed)
        self.params = [self.rng.standard_normal(s).astype(d) for s, d, _ in specs]
        by_group = [[p for p, (_, _, gid) in zip(self.params, specs) if gid == g] for g in (0, 1)]
        groups = [{"params": ps} for ps in by_group if ps]
        if len(groups) == 2:
            groups[1]["lr"] = 0.01
        self.order = [p for g in groups for p in g["params"]]
        self.cls = cls
        self.opt = cls(groups, lr=lr)
        self.valid = [dict((k, g[k]) for k in GROUP_EDITS) for g in self.opt.param_groups]
        self.bad_keys = set()              # (group, key) currently holding a bad value
        self.tmp = tempfile.mkdtemp(prefix="fastadam-fuzz-")
        self.remember()

    def teardown(self):
        if hasattr(self, "tmp"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- model
    def remember(self):
        self.model_params = [p.copy() for p in self.order]
        self.model_sd = self.opt.state_dict()

    def assert_unchanged(self, why):
        for i, (p, q) in enumerate(zip(self.order, self.model_params)):
            assert np.array_equal(p, q, equal_nan=True), f"param {i} changed after {why}"
        sd = self.opt.state_dict()
        for i, st_ in sd["state"].items():
            want = self.model_sd["state"][i]
            assert st_["step"] == want["step"], f"step of {i} changed after {why}"
            for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if k in want:
                    assert np.array_equal(st_[k], want[k], equal_nan=True), \
                        f"state[{i}][{k}] changed after {why}"

    def expect_error(self, call, why):
        COUNTS["optimizer operations"] += 1
        with pytest.raises(ERRORS):
            call()
        self.assert_unchanged(why)

    @property
    def bad_edit(self):
        return bool(self.bad_keys)

    def amsgrad_pending(self):
        """A group turned amsgrad on and no step has allocated max_exp_avg_sq yet."""
        return any(g["amsgrad"] is True for g in self.opt.param_groups) and \
            "max_exp_avg_sq" not in self.opt.state[0]

    # -- rules
    @rule(kind=st.sampled_from(["list", "list", "prealloc", "count", "dtype", "shape",
                                "noncontig", "alias_param", "alias_state", "not_list"]))
    def step(self, kind):
        grads = [self.rng.standard_normal(p.shape).astype(p.dtype) for p in self.order]
        if self.bad_edit or kind not in ("list", "prealloc"):
            k = self.rng.integers(len(grads))
            p = self.order[k]
            if kind == "count":
                grads = grads[:-1]
            elif kind == "dtype":
                grads[k] = grads[k].astype(np.float32 if p.dtype == np.float64 else np.float64)
            elif kind == "shape":
                grads[k] = np.zeros(p.size + 1, p.dtype)
            elif kind == "noncontig":
                if p.size < 2:
                    grads[k] = None
                else:
                    grads[k] = np.zeros(p.shape + (2,), p.dtype)[..., 0]
            elif kind == "alias_param":
                if p.size == 0:
                    grads[k] = "grad"
                else:
                    grads[k] = p
            elif kind == "alias_state":
                if p.size == 0 or self.amsgrad_pending():   # (the next step reallocates)
                    grads[k] = [0.0]
                else:
                    grads[k] = self.opt.state[k]["exp_avg"]
            elif kind == "not_list":
                grads = np.zeros(3)
            self.expect_error(lambda: self.opt.step(grads), f"bad step ({kind})")
            return
        COUNTS["optimizer operations"] += 1
        if kind == "prealloc":
            for buf, g in zip(self.opt.grads, grads):
                buf[...] = g
            self.opt.step()
        else:
            self.opt.step(grads)
        self.check_step(grads)
        self.remember()

    def check_step(self, grads):
        k = 0
        for gi, group in enumerate(self.opt.param_groups):
            h = dict(lr=group["lr"], betas=tuple(group["betas"]), eps=group["eps"],
                     weight_decay=group["weight_decay"], maximize=group["maximize"],
                     bias_correction=group["bias_correction"], eps_mode=group["eps_mode"])
            for _ in group["params"]:
                before = self.model_sd["state"][k]
                t = before["step"] + 1
                vmax = before.get("max_exp_avg_sq")
                if group["amsgrad"] and vmax is None:
                    vmax = np.zeros_like(before["exp_avg"])
                amsgrad = group["amsgrad"]
                with np.errstate(all="ignore"):
                    ref = adam_reference(self.model_params[k], grads[k], before["exp_avg"],
                                         before["exp_avg_sq"], vmax if amsgrad else None,
                                         step=t, amsgrad=amsgrad,
                                         decoupled=self.cls is fa.AdamW, **h)
                now = self.opt.state[k]
                assert now["step"] == t
                dtype = self.order[k].dtype.type
                after = (self.order[k], now["exp_avg"], now["exp_avg_sq"],
                         now.get("max_exp_avg_sq"))
                check_step_result(dtype, (self.model_params[k], grads[k], before["exp_avg"],
                                          before["exp_avg_sq"], vmax), after, ref,
                                  dict(h, decoupled=self.cls is fa.AdamW), amsgrad)
                if not amsgrad and before.get("max_exp_avg_sq") is not None:
                    assert np.array_equal(now["max_exp_avg_sq"], before["max_exp_avg_sq"])
                k += 1

    @rule(data=st.data(), key=st.sampled_from(sorted(GROUP_EDITS)))
    def edit_group(self, data, key):
        gi = data.draw(st.integers(0, len(self.opt.param_groups) - 1))
        good, bad = GROUP_EDITS[key]
        if data.draw(st.integers(0, 3)) == 0:
            value = data.draw(st.sampled_from(bad))
            self.opt.param_groups[gi][key] = value
            self.bad_keys.add((gi, key))
        else:
            value = data.draw(st.sampled_from(good))
            self.opt.param_groups[gi][key] = value
            self.valid[gi][key] = value
            self.bad_keys.discard((gi, key))

    @precondition(lambda self: self.bad_edit)
    @rule()
    def repair_groups(self):
        for g, valid in zip(self.opt.param_groups, self.valid):
            g.update(valid)
        self.bad_keys.clear()

    # state_dict() exports edits as they are (a just-enabled amsgrad exports zeros)
    @precondition(lambda self: not self.bad_edit)
    @rule(target=snapshots)
    def snapshot(self):
        COUNTS["optimizer operations"] += 1
        return self.opt.state_dict()

    @precondition(lambda self: not self.bad_edit)
    @rule(sd=snapshots, damage=st.sampled_from([None, None, "shape", "dtype", "step",
                                                "algorithm", "lr", "list"]))
    def load_snapshot(self, sd, damage):
        import copy
        sd = copy.deepcopy(sd)
        if damage is None:
            COUNTS["optimizer operations"] += 1
            self.opt.load_state_dict(sd)
            self.valid = [dict((k, g[k]) for k in GROUP_EDITS) for g in self.opt.param_groups]
            self.assert_loaded(sd)
            self.remember()
            return
        st0 = sd["state"][0]
        if damage == "shape":
            st0["exp_avg"] = np.zeros(st0["exp_avg"].size + 1, st0["exp_avg"].dtype)
        elif damage == "dtype":
            st0["exp_avg_sq"] = st0["exp_avg_sq"].astype(np.float16)
        elif damage == "step":
            st0["step"] = -3
        elif damage == "algorithm":
            sd["algorithm"] = "adamw" if self.cls is fa.Adam else "adam"
        elif damage == "lr":
            sd["param_groups"][0]["lr"] = float("nan")
        elif damage == "list":
            st0["exp_avg"] = st0["exp_avg"].tolist()
            st0["step"] = max(st0["step"], 1)
        self.expect_error(lambda: self.opt.load_state_dict(sd), f"damaged load ({damage})")

    def assert_loaded(self, sd):
        now = self.opt.state_dict()
        for i, want in sd["state"].items():
            assert now["state"][i]["step"] == want["step"]
            for k in ("exp_avg", "exp_avg_sq"):
                assert np.array_equal(now["state"][i][k], want[k], equal_nan=True)
        for g, w in zip(now["param_groups"], sd["param_groups"]):
            assert g == w

    @precondition(lambda self: not self.bad_edit and not self.amsgrad_pending())
    @rule()
    def save_and_load(self):
        COUNTS["optimizer operations"] += 1
        path = os.path.join(self.tmp, "c.npz")
        self.opt.save(path)
        sd = self.opt.state_dict()
        fresh = self.cls([np.zeros_like(p) for p in self.order], lr=0.5)
        if len(self.opt.param_groups) == 2:
            n0 = len(self.opt.param_groups[0]["params"])
            fresh = self.cls([{"params": [np.zeros_like(p) for p in self.order[:n0]]},
                              {"params": [np.zeros_like(p) for p in self.order[n0:]]}])
        fresh.load(path)
        self.opt.load(path)
        self.assert_loaded(sd)
        for a, b in zip(fresh.state_dict()["state"].values(), sd["state"].values()):
            assert a["step"] == b["step"]
            assert all(np.array_equal(a[k], b[k], equal_nan=True) for k in b if k != "step")
        self.remember()

    @invariant()
    def state_views_match_state_dict(self):
        if hasattr(self, "opt"):
            for i, p in enumerate(self.order):
                assert self.opt.state[i]["exp_avg"].shape == p.shape


OptimizerMachine.TestCase.settings = settings(max_examples=100 * SCALE,
                                              stateful_step_count=20, deadline=None)
test_optimizer_call_orders = OptimizerMachine.TestCase


# ------------------------------------------------------------------ core bugs found (fixed)
@pytest.mark.parametrize("step", [2**63, 2**64])
def test_step_beyond_int64_is_a_value_error(step):
    p, g, m, v = (np.zeros(3) for _ in range(4))
    with pytest.raises(ValueError, match="step"):
        fa.adam_step(p, g, m, v, step=step)


def test_load_state_dict_step_beyond_int64_is_a_value_error_and_changes_nothing():
    opt = fa.Adam([np.zeros(3)])
    opt.step([np.ones(3)])
    sd = opt.state_dict()
    sd["state"][0]["step"] = 2**63
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict(sd)
    assert opt.state[0]["step"] == 1


def test_state_dict_taken_right_after_enabling_amsgrad_loads_back(tmp_path):
    opt = fa.Adam([np.zeros(3)])
    opt.step([np.ones(3)])
    opt.param_groups[0]["amsgrad"] = True
    opt.save(tmp_path / "c.npz")
    opt.load_state_dict(opt.state_dict())
    opt.load(tmp_path / "c.npz")


def test_edited_flag_equal_to_old_value_is_still_type_checked():
    opt = fa.Adam([np.zeros(3)], amsgrad=True)
    opt.step([np.ones(3)])
    opt.param_groups[0]["amsgrad"] = 1
    with pytest.raises(TypeError, match=r"\['amsgrad'\] must be a bool"):
        opt.step([np.ones(3)])
