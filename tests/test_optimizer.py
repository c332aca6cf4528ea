"""Adam / AdamW objects against the float64 reference: shapes, groups, dtypes, flat
buffers, edits between steps, state_dict and checkpoints."""
import numpy as np
import pytest

import fastadam as fa
from conftest import DTYPES
from reference import adam_reference

SHAPES = [(0,), (1,), (3, 4), (2, 3, 5), (1000,), (17, 1)]


def random_params(rng, dtype, shapes=SHAPES):
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


class Ref:
    """Reference optimizer: adam_reference per array, float64 state."""

    def __init__(self, params, decoupled=False, **h):
        self.p = [np.array(p, dtype=np.float64) for p in params]
        self.m = [np.zeros_like(p) for p in self.p]
        self.v = [np.zeros_like(p) for p in self.p]
        self.vmax = [np.zeros_like(p) for p in self.p]
        self.t = 0
        self.h = dict(h, decoupled=decoupled)

    def step(self, grads, hs=None):
        self.t += 1
        for i, g in enumerate(grads):
            h = hs[i] if hs else self.h
            amsgrad = h.get("amsgrad", False)
            self.p[i], self.m[i], self.v[i], vm = adam_reference(
                self.p[i], g, self.m[i], self.v[i], self.vmax[i] if amsgrad else None,
                step=self.t, **h)
            if amsgrad:
                self.vmax[i] = vm


def assert_close(dtype, got, want, steps=1):
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * (np.abs(want).max(initial=1)))
    else:
        # float32 trajectory vs float64: each step rounds p once (plus a few ulp of the
        # update), so the gap grows by a few ulp of |p| per step.
        tol = 4 * steps * np.finfo(np.float32).eps * np.maximum(np.abs(want), 1e-2)
        np.testing.assert_array_less(np.abs(got - want), tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,h", [
    (fa.Adam, dict(lr=0.01)),
    (fa.Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (fa.Adam, dict(lr=0.01, maximize=True, eps_mode="hat")),
    (fa.Adam, dict(lr=0.01, bias_correction=False, betas=(0.8, 0.99), eps=1e-6)),
    (fa.AdamW, dict(lr=0.01)),
    (fa.AdamW, dict(lr=0.01, weight_decay=0.5, amsgrad=True, maximize=True)),
], ids=["adam", "adam-l2-ams", "adam-max-hat", "adam-nobc", "adamw", "adamw-ams-max"])
def test_object_api_matches_reference_for_many_shapes(cls, h, dtype, launch_mode):
    rng = np.random.default_rng(0)
    params = random_params(rng, dtype)
    ref = Ref(params, decoupled=cls is fa.AdamW, **{"weight_decay": 1e-2 if cls is fa.AdamW else 0.0, **h})
    opt = cls(params, **h)
    for t in range(20):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
        opt.step(grads)
        ref.step(grads)
    for p, rp in zip(params, ref.p):
        assert p.dtype == dtype
        assert_close(dtype, p, rp, steps=20)


@pytest.mark.parametrize("dtype", DTYPES)
def test_preallocated_grads_give_the_same_result_as_a_grads_list(dtype, launch_mode):
    rng = np.random.default_rng(1)
    a = random_params(rng, dtype)
    b = [x.copy() for x in a]
    opt_a, opt_b = fa.Adam(a, lr=0.1, amsgrad=True), fa.Adam(b, lr=0.1, amsgrad=True)
    for _ in range(5):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in a]
        opt_a.step(grads)
        for buf, g in zip(opt_b.grads, grads):
            buf[...] = g
        opt_b.step()
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


def test_grads_are_views_of_one_flat_buffer_and_zero_grad_clears_them():
    opt = fa.Adam([np.zeros((2, 3), np.float32), np.zeros(4, np.float32)])
    assert [g.shape for g in opt.grads] == [(2, 3), (4,)]
    assert opt.grads[0].base is not None and opt.grads[0].base is opt.grads[1].base
    opt.grads[0][...] = 1
    opt.zero_grad()
    assert not opt.grads[0].any()


def test_mixed_dtypes_and_groups_each_follow_their_own_hyperparameters(launch_mode):
    rng = np.random.default_rng(2)
    p32 = random_params(rng, np.float32, [(5,), (3, 3)])
    p64 = random_params(rng, np.float64, [(4,), (2, 2)])
    groups = [{"params": [p32[0], p64[0]], "lr": 0.05, "amsgrad": True},
              {"params": [p32[1]], "weight_decay": 0.3},
              {"params": [p64[1]], "betas": (0.5, 0.9), "maximize": True}]
    opt = fa.Adam(groups, lr=0.01)
    order = [p32[0], p64[0], p32[1], p64[1]]
    hs = [dict(lr=0.05, amsgrad=True)] * 2 + [dict(lr=0.01, weight_decay=0.3),
                                              dict(lr=0.01, betas=(0.5, 0.9), maximize=True)]
    ref = Ref(order)
    for _ in range(10):
        grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in order]
        opt.step(grads)
        ref.step(grads, hs)
    for p, rp in zip(order, ref.p):
        assert_close(p.dtype.type, p, rp, steps=10)


def test_hyperparameters_edited_between_steps_take_effect(launch_mode):
    rng = np.random.default_rng(3)
    params = random_params(rng, np.float64, [(10,)])
    opt = fa.Adam(params, lr=0.01)
    ref = Ref(params, lr=0.01)
    schedule = [dict(lr=0.01), dict(lr=0.1), dict(lr=0.1, amsgrad=True),
                dict(lr=0.001, weight_decay=0.2, amsgrad=True), dict(lr=0.001, betas=(0.8, 0.9))]
    for h in schedule:
        opt.param_groups[0].update(h)
        g = [rng.standard_normal(10)]
        opt.step(g)
        full = dict(lr=0.01, betas=(0.9, 0.999), weight_decay=0.0, amsgrad=False)
        for k in ("lr", "betas", "weight_decay", "amsgrad"):
            full[k] = opt.param_groups[0][k]
        ref.step(g, [full])
    np.testing.assert_allclose(params[0], ref.p[0], rtol=1e-12)


def test_betas_edited_in_place_are_seen():
    p = [np.zeros(3)]
    opt = fa.Adam(p, betas=[0.9, 0.999])
    opt.step([np.ones(3)])
    opt.param_groups[0]["betas"] = [0.0, 0.999]
    opt.step([np.full(3, 2.0)])
    assert np.all(opt.state[0]["exp_avg"] == 2.0)   # beta1 = 0: m is the last gradient


@pytest.mark.parametrize("dtype", DTYPES)
def test_views_of_a_flat_buffer_step_in_one_chunk(dtype):
    rng = np.random.default_rng(4)
    arrays = random_params(rng, dtype, [(3, 4), (7,), (2, 2, 2)])
    flat, views = fa.flatten(arrays)
    assert flat.ndim == 1 and flat.size == sum(a.size for a in arrays)
    assert flat.ctypes.data % 64 == 0
    for a, v in zip(arrays, views):
        assert np.shares_memory(v, flat) and np.array_equal(a, v)
    opt = fa.Adam(views)
    opt.step()
    launches = [L for b in opt._buckets for L in b.launches]
    assert len(launches) == 1 and launches[0].flat_plan.shape[0] == 1, \
        "views of one buffer with opt.grads must be a single chunk in a single launch"


def test_separate_arrays_are_stepped_in_a_single_launch():
    arrays = [np.zeros(10, np.float32) for _ in range(50)]
    opt = fa.Adam(arrays)
    opt.step([np.ones(10, np.float32)] * 50)
    launches = [L for b in opt._buckets for L in b.launches]
    assert len(launches) == 1 and launches[0].plan.shape[0] == 50


def test_flatten_validates_and_converts():
    flat, views = fa.flatten([np.arange(3, dtype=np.float32), np.arange(2.0)])
    assert flat.dtype == np.float64   # common type
    flat, views = fa.flatten([np.arange(3)], dtype=np.float32)
    assert flat.dtype == np.float32 and views[0].tolist() == [0, 1, 2]
    with pytest.raises(TypeError, match="float32 and float64"):
        fa.flatten([np.arange(3)])
    with pytest.raises(ValueError, match="at least one"):
        fa.flatten([])


@pytest.mark.parametrize("cls", [fa.Adam, fa.AdamW])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_state_dict_round_trip_resumes_bit_for_bit(cls, amsgrad):
    rng = np.random.default_rng(5)
    grads = [[rng.standard_normal(s).astype(np.float32) for s in [(4, 3), (5,)]] for _ in range(10)]
    a = [np.ones((4, 3), np.float32), np.ones(5, np.float32)]
    opt = cls(a, lr=0.05, amsgrad=amsgrad)
    for g in grads[:5]:
        opt.step(g)
    sd = opt.state_dict()
    b = [x.copy() for x in a]
    for g in grads[5:]:
        opt.step(g)
    opt2 = cls(b, lr=0.9)      # different lr: load_state_dict restores 0.05
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.05
    for g in grads[5:]:
        opt2.step(g)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert opt2.state[0]["step"] == 10


def test_state_dict_holds_copies_in_torch_layout():
    p = [np.zeros(3, np.float32)]
    opt = fa.Adam(p, amsgrad=True)
    opt.step([np.ones(3, np.float32)])
    sd = opt.state_dict()
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["param_groups"][0]["params"] == [0]
    sd["state"][0]["exp_avg"][:] = 99
    assert not np.any(opt.state[0]["exp_avg"] == 99)


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_and_load_resume_bit_for_bit(tmp_path, dtype):
    rng = np.random.default_rng(6)
    grads = [[rng.standard_normal(s).astype(dtype) for s in [(3,), (2, 2)]] for _ in range(8)]
    a = [np.zeros(3, dtype), np.zeros((2, 2), dtype)]
    opt = fa.AdamW(a, lr=0.1, amsgrad=True)
    for g in grads[:4]:
        opt.step(g)
    path = tmp_path / "ckpt.npz"
    opt.save(path)
    b = [x.copy() for x in a]
    for g in grads[4:]:
        opt.step(g)
    opt2 = fa.AdamW(b, lr=0.1, amsgrad=True)
    opt2.load(path)
    for g in grads[4:]:
        opt2.step(g)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    with np.load(path, allow_pickle=False) as z:     # readable without pickle
        assert "__meta__" in z.files


def test_save_failure_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    p = [np.zeros(3)]
    opt = fa.Adam(p)
    path = tmp_path / "ckpt.npz"
    opt.save(path)
    before = path.read_bytes()
    opt.step([np.ones(3)])

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np.lib.format, "write_array", boom)
    with pytest.raises(OSError):
        opt.save(path)
    assert path.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["ckpt.npz"]


def test_add_param_group_keeps_existing_state_and_starts_new_params_at_step_zero():
    a = [np.zeros(3)]
    opt = fa.Adam(a, lr=0.1)
    opt.step([np.ones(3)])
    m_before = opt.state[0]["exp_avg"].copy()
    b = np.zeros(2)
    opt.add_param_group({"params": [b], "lr": 0.5})
    assert np.array_equal(opt.state[0]["exp_avg"], m_before)
    assert opt.state[1]["step"] == 0 and opt.state[0]["step"] == 1
    opt.step([np.ones(3), np.ones(2)])
    np.testing.assert_allclose(b, -0.5, rtol=1e-6)     # first step of b: ~ -lr * sign(g)
    assert opt.state[1]["step"] == 1 and opt.state[0]["step"] == 2


def test_repr_lists_groups():
    text = repr(fa.Adam([np.zeros(2)], lr=0.3))
    assert "Parameter Group 0" in text and "lr: 0.3" in text


@pytest.mark.parametrize("edit", ["setitem", "update", "replace-dict", "setdefault-new-key-then-lr",
                                  "ior"])
def test_every_way_of_editing_a_group_is_seen(edit):
    p = [np.zeros(4)]
    opt = fa.Adam(p, lr=0.1)
    opt.step([np.ones(4)])
    g = opt.param_groups[0]
    if edit == "setitem":
        g["lr"] = 0.0
    elif edit == "update":
        g.update(lr=0.0)
    elif edit == "replace-dict":
        opt.param_groups[0] = dict(g, lr=0.0)
    elif edit == "setdefault-new-key-then-lr":
        g.setdefault("name", "body")
        dict.__setitem__(g, "lr", 0.0)   # a raw write after a tracked one in the same step
    elif edit == "ior":
        g |= {"lr": 0.0}
    before = p[0].copy()
    opt.step([np.ones(4)])
    assert np.array_equal(p[0], before), f"lr=0 edit via {edit} was not applied"
    assert opt.param_groups[0]["lr"] == 0.0


def test_param_groups_survive_deepcopy_as_tracked_dicts():
    import copy
    opt = fa.Adam([np.zeros(2)], lr=0.1)
    clone = copy.deepcopy(opt)
    clone.param_groups[0]["lr"] = 0.0
    before = clone._params[0].copy()
    clone.step([np.ones(2)])
    assert np.array_equal(clone._params[0], before)
