"""Every algorithm x option combination, listed once. The tests in test_variants.py are
generated from this table: reference parity, torch parity, functional = object API,
state_dict and checkpoint round-trips, bad values and foreign options. A new algorithm
gets all of them by adding rows here."""
from dataclasses import dataclass, field

import numpy as np

import fastadam as fa
from fastadam.kernels import registry


@dataclass(frozen=True)
class Variant:
    algorithm: str               # registry name
    cls: type                    # fastadam class
    options: dict = field(default_factory=dict)
    torch: str = None            # torch.optim twin (None: no torch equivalent)

    @property
    def id(self):
        opts = "-".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.cls.__name__}" + (f"[{opts}]" if opts else "")

    @property
    def alg(self):
        return registry.get(self.algorithm)

    @property
    def sparse(self):
        """Gradients are (indices, values) pairs of rows (layout "rows")."""
        return self.alg.layout == "rows"


def _v(alg, cls, torch=None, **options):
    return Variant(alg, cls, options, torch)


VARIANTS = [
    _v("adam", fa.Adam, "Adam", lr=1e-2),
    _v("adam", fa.Adam, "Adam", lr=1e-2, amsgrad=True),
    _v("adam", fa.Adam, "Adam", lr=1e-2, maximize=True),
    _v("adam", fa.Adam, "Adam", lr=3e-3, weight_decay=0.1, amsgrad=True, maximize=True),
    _v("adam", fa.Adam, "Adam", lr=1e-2, weight_decay=0.2, decoupled_weight_decay=True),
    _v("adam", fa.Adam, "Adam", lr=1e-2, betas=(0.5, 0.9), eps=1e-6),
    _v("adam", fa.Adam, None, lr=1e-2, eps_mode="hat", eps=1e-4),
    _v("adam", fa.Adam, None, lr=1e-2, bias_correction=False),
    _v("adamw", fa.AdamW, "AdamW", lr=1e-2),
    _v("adamw", fa.AdamW, "AdamW", lr=1e-2, weight_decay=0.3, amsgrad=True),
    _v("adamw", fa.AdamW, "AdamW", lr=1e-2, weight_decay=0.3, maximize=True, amsgrad=True),
    _v("adamax", fa.Adamax, "Adamax"),
    _v("adamax", fa.Adamax, "Adamax", lr=1e-2, weight_decay=0.1, maximize=True),
    _v("adamax", fa.Adamax, "Adamax", betas=(0.5, 0.9), eps=1e-4),
    _v("nadam", fa.NAdam, "NAdam"),
    _v("nadam", fa.NAdam, "NAdam", lr=1e-2, weight_decay=0.1, momentum_decay=1e-2),
    _v("nadam", fa.NAdam, "NAdam", lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True,
       maximize=True),
    _v("radam", fa.RAdam, "RAdam"),
    _v("radam", fa.RAdam, "RAdam", lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99)),
    _v("radam", fa.RAdam, "RAdam", lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True,
       maximize=True),
    _v("sparse_adam", fa.SparseAdam, "SparseAdam", lr=1e-2),
    _v("sparse_adam", fa.SparseAdam, "SparseAdam", lr=1e-2, maximize=True),
    _v("sparse_adam", fa.SparseAdam, "SparseAdam", lr=3e-3, betas=(0.5, 0.9), eps=1e-4),
]

IDS = [v.id for v in VARIANTS]

#: Bad values for each option, with the exception they raise.
BAD_VALUES = {
    "lr": [(-1.0, ValueError), (float("nan"), ValueError), ("0.1", TypeError)],
    "weight_decay": [(-0.1, ValueError), (float("inf"), ValueError)],
    "maximize": [(1, TypeError), ("yes", TypeError)],
    "max_grad_norm": [(0.0, ValueError), (-1.0, ValueError)],
    "betas": [((1.0, 0.9), ValueError), ((0.9,), TypeError), ((0.9, -0.1), ValueError)],
    "eps": [(-1e-8, ValueError), (None, TypeError)],
    "amsgrad": [(1, TypeError)],
    "bias_correction": [("no", TypeError)],
    "eps_mode": [("tf", ValueError)],
    "decoupled_weight_decay": [(0, TypeError)],
    "momentum_decay": [(-1.0, ValueError), (float("nan"), ValueError)],
}

#: A valid value of each option, different from every class's default.
OTHER_VALUES = {"amsgrad": True, "bias_correction": False, "eps_mode": "hat",
                "decoupled_weight_decay": True, "momentum_decay": 0.01}


def functional_step(v, param, grad, state, step, mu_product=1.0):
    """Call the functional form of variant ``v`` on flat arrays; ``state`` holds its
    state arrays by state_dict name. Returns the new mu_product (NAdam) or None."""
    o = {k: val for k, val in v.options.items()}
    if v.algorithm == "adamw":
        o["decoupled_weight_decay"] = True
        o.setdefault("weight_decay", 1e-2)
    if v.algorithm in ("adam", "adamw"):
        return fa.adam_step(param, grad, state["exp_avg"], state["exp_avg_sq"], step=step,
                            max_exp_avg_sq=state.get("max_exp_avg_sq"), **o)
    if v.algorithm == "adamax":
        return fa.adamax_step(param, grad, state["exp_avg"], state["exp_inf"], step=step, **o)
    if v.algorithm == "nadam":
        return fa.nadam_step(param, grad, state["exp_avg"], state["exp_avg_sq"], step=step,
                             mu_product=mu_product, **o)
    if v.algorithm == "sparse_adam":
        idx, vals = grad
        return fa.sparse_adam_step(param, idx, vals, state["exp_avg"], state["exp_avg_sq"],
                                   step=step, **o)
    if v.algorithm == "radam":
        return fa.radam_step(param, grad, state["exp_avg"], state["exp_avg_sq"], step=step, **o)
    raise AssertionError(f"no functional form listed for {v.algorithm}")


def make_problem(dtype, seed=0, shapes=((7, 3), (50,), (1,))):
    rng = np.random.default_rng(seed)
    return rng, [rng.standard_normal(s).astype(dtype) for s in shapes]


# ------------------------------------------------------------------ gradients of a variant
def as_grad(v, dense):
    """The gradient ``dense`` in the form variant ``v`` takes: the array itself, or for
    a sparse variant the pair (every row once, its row of ``dense``)."""
    if not v.sparse:
        return dense
    return np.arange(dense.shape[0]), np.ascontiguousarray(dense)


def random_grad(v, rng, x, t, dtype, scale=1.0):
    """A random gradient for parameter ``x`` at step t (1, 2, ...). Sparse variants get
    (indices, values) pairs that cycle through the cases that matter: an empty index set
    (every 7th step), many duplicates of a few rows, and uniform rows with repeats; the
    values row count follows the indices."""
    if not v.sparse:
        return (rng.standard_normal(x.shape) * scale).astype(dtype)
    n = x.shape[0]
    case = t % 7
    if case == 0:
        k, idx = 0, np.zeros(0, np.int64)
    elif case % 2:
        k = int(rng.integers(1, 3 * n + 1))
        idx = rng.integers(0, max(1, n // 4), k)          # few rows, many duplicates
    else:
        k = int(rng.integers(1, n + 1))
        idx = rng.integers(0, n, k)
    vals = (rng.standard_normal((k,) + x.shape[1:]) * scale).astype(dtype)
    return idx, vals


def reference_step(v, param, grad, state, step, hp):
    """The float64 reference step of ``v`` (registry entry), in place on ``state``."""
    if v.sparse:
        return v.alg.reference(param, grad[0], grad[1], state, step, hp)
    return v.alg.reference(param, grad, state, step, hp)


def torch_grad(v, grad, shape):
    """``grad`` as the tensor torch's twin of ``v`` takes: dense, or a sparse COO tensor
    with the duplicates left for torch to coalesce."""
    import torch
    if not v.sparse:
        return torch.from_numpy(grad.copy())
    idx, vals = grad
    return torch.sparse_coo_tensor(torch.from_numpy(np.asarray(idx, np.int64)[None, :]),
                                   torch.from_numpy(vals.copy()), shape)
