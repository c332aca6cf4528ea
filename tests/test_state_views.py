"""Public read-only views of an optimizer's live state used by the front ends."""
import numpy as np
import pytest

import fastadam as fa


def test_group_scalars_are_live_read_only_and_match_state_dict():
    rng = np.random.default_rng(0)
    p, q = rng.standard_normal(8), rng.standard_normal(4)
    opt = fa.NAdam([{"params": [p]}, {"params": [q], "momentum_decay": 8e-3}])
    before = {k: v.copy() for k, v in opt.group_scalars.items()}
    for _ in range(3):
        opt.step([rng.standard_normal(8), rng.standard_normal(4)])
    live = opt.group_scalars
    assert set(live) == {"mu_product"}
    assert live["mu_product"].shape == (2,)
    assert not np.array_equal(live["mu_product"], before["mu_product"])
    sd = opt.state_dict()["state"]
    assert live["mu_product"][0] == sd[0]["mu_product"]
    assert live["mu_product"][1] == sd[1]["mu_product"]
    with pytest.raises(ValueError):
        live["mu_product"][0] = 1.0
    assert fa.Adam([p]).group_scalars == {}


def test_sparse_param_state_gives_live_moments_before_and_after_steps():
    rng = np.random.default_rng(1)
    table = rng.standard_normal((6, 3))
    opt = fa.SparseAdam([table, rng.standard_normal(5)])
    step, m, v = opt.param_state(0)
    assert step == 0 and not m.any() and not v.any()
    opt.step([(np.array([1, 1, 4]), rng.standard_normal((3, 3))), None])
    step, m2, v2 = opt.param_state(0)
    assert step == 1 and m2 is m and v2 is v           # the same live buffers
    assert m[[1, 4]].any() and not m[[0, 2, 3, 5]].any()
    np.testing.assert_array_equal(m, opt.state[0]["exp_avg"])
    assert opt.param_state(1)[0] == 0 and 1 not in opt.state
