"""The registry: every algorithm is listed once and drives its front-ends; SparseAdam
(a row-layout algorithm) against its registry reference."""
import numpy as np
import pytest

import fastadam as fa
from fastadam.kernels import registry


def test_every_public_optimizer_names_a_registered_algorithm():
    classes = [fa.Adam, fa.AdamW, fa.Adamax, fa.NAdam, fa.RAdam, fa.SparseAdam]
    assert sorted(c.algorithm for c in classes) == sorted(registry.ALGORITHMS)
    assert [a.id for a in registry.BY_ID] == list(range(len(registry.BY_ID)))
    for a in registry.BY_ID:
        assert a.reference is not None, a.name
        if a.layout == "dense":
            assert None not in (a.scalars, a.consts, a.element), a.name


def test_sparse_adam_matches_its_registry_reference_over_many_steps():
    spec = registry.get("sparse_adam")
    rng = np.random.default_rng(0)
    table = rng.standard_normal((40, 3))
    vec = rng.standard_normal(25)
    opt = fa.SparseAdam([table, vec], lr=1e-2, betas=(0.8, 0.99), maximize=True)
    hp = dict(opt.param_groups[0])
    refs = [table.copy(), vec.copy()]
    states = [{k: np.zeros_like(x) for k in spec.state} for x in refs]
    for t in range(1, 81):
        grads = []
        for x in refs:
            idx = rng.integers(0, x.shape[0], rng.integers(0, 12))   # duplicates, empty
            grads.append((idx, rng.standard_normal((idx.size,) + x.shape[1:])))
        opt.step(grads)
        refs = [spec.reference(x, i, v, st, t, hp)
                for x, (i, v), st in zip(refs, grads, states)]
    for k, (x, ref) in enumerate(zip([table, vec], refs)):
        np.testing.assert_allclose(x, ref, rtol=1e-12, atol=1e-14)
        for name in spec.state:
            np.testing.assert_allclose(opt.state_dict()["state"][k][name], states[k][name],
                                       rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("key,value", [("weight_decay", 0.1), ("amsgrad", True),
                                       ("max_grad_norm", 1.0)])
def test_sparse_adam_refuses_options_it_cannot_serve(key, value):
    with pytest.raises(ValueError, match=f"sparse_adam has no '{key}' option"):
        fa.SparseAdam([{"params": [np.zeros((4, 2))], key: value}])
