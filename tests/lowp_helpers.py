"""Helpers shared by the low-precision optimizer tests: parameters and gradients of a
few shapes, a byte-exact snapshot of an optimizer, and the state_dict / checkpoint /
deepcopy round trip that every low-precision layout must survive bit for bit."""
import copy

import numpy as np

import fastadam as fa


def params(seed=0, shapes=((7, 300), (5,), (3, 4))):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def grads_like(ps, rng):
    return [rng.standard_normal(p.shape).astype(np.float32) for p in ps]


def snap(opt, ps):
    """Parameters and the state_dict's arrays as bytes (with their dtypes), the scalars
    of each parameter's state, skipped steps and the param groups: equal snapshots mean
    bit-identical optimizers."""
    sd = opt.state_dict()
    out = [p.tobytes() for p in ps] + [sd["skipped_steps"]]
    for i in sorted(sd["state"]):
        out += [(k, a.dtype.str, a.tobytes()) if isinstance(a, np.ndarray) else (k, a)
                for k, a in sorted(sd["state"][i].items())]
    return out + [sorted((k, str(v)) for k, v in g.items()) for g in sd["param_groups"]]


def step_both(a, b, ps, rng, steps=2):
    """Step two optimizers over the same parameters' shapes with the same gradients."""
    for _ in range(steps):
        g = grads_like(ps, rng)
        a.step(g)
        b.step(g)


def assert_cross_layout_refused(f32, lp):
    """Each of two optimizers (float32 state and a low-precision one) refuses the other's
    state_dict, naming convert_state_dict, and is left bit for bit as it was. Returns
    the two state dicts (f32's, lp's)."""
    import pytest
    sd32, sdlp = f32.state_dict(), lp.state_dict()
    for dst, src in ((lp, sd32), (f32, sdlp)):
        before = snap(dst, dst.param_groups[0]["params"])
        with pytest.raises(ValueError, match="convert_state_dict"):
            dst.load_state_dict(src)
        assert snap(dst, dst.param_groups[0]["params"]) == before
    return sd32, sdlp


def assert_round_trips(opt, ps, make, path, rng, steps=2, grads=grads_like):
    """Restore ``opt`` three ways (``load_state_dict`` of its state_dict into
    ``make(params)``, ``load`` of a checkpoint saved at ``path``, ``copy.deepcopy``),
    check each copy equals it bit for bit, then step all of them ``steps`` times with the
    same gradients (``grads(ps, rng)``) and check again."""
    sd = opt.state_dict()
    opt.save(path)
    copies = []
    for how in ("state_dict", "checkpoint", "deepcopy"):
        qs = [p.copy() for p in ps]
        o2 = make(qs)
        if how == "state_dict":
            o2.load_state_dict(sd)
        elif how == "checkpoint":
            o2.load(path)
        else:
            o2 = copy.deepcopy(opt)
            qs = [q for g in o2.param_groups for q in g["params"]]
        assert snap(o2, qs) == snap(opt, ps), how
        copies.append((how, o2, qs))
    for _ in range(steps):
        g = grads(ps, rng)
        opt.step(g)
        for _, o2, _ in copies:
            o2.step([x.copy() for x in g])
    for how, o2, qs in copies:
        assert snap(o2, qs) == snap(opt, ps), how


def nr_lowp_step(alg, p, g, st, t, mp, lr, **kw):
    """One functional low-precision NAdam / RAdam step (``alg``); returns the new
    mu_product (NAdam; ``mp`` unchanged for RAdam)."""
    if alg == "nadam":
        return fa.nadam_step_lowp(p, g, st, step=t, mu_product=mp, lr=lr, **kw)
    fa.radam_step_lowp(p, g, st, step=t, lr=lr, **kw)
    return mp


def nr_f32_step(alg, p, g, m, v, t, mp, lr, **kw):
    """The float32 functional step of the same algorithm, same return."""
    with np.errstate(all="ignore"):
        if alg == "nadam":
            return fa.nadam_step(p, g, m, v, step=t, mu_product=mp, lr=lr, **kw)
        fa.radam_step(p, g, m, v, step=t, lr=lr, **kw)
    return mp
