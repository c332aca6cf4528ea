"""Training runs that compare the low-precision layouts with float32 Adam, and the plot
of docs/low_precision.md (docs/img/lowp_loss.png).

    python3 scripts/lowp_experiments.py [--out docs/img/lowp_loss.png]

tests/test_lowp.py runs the same functions as its convergence checks."""
from __future__ import annotations

import argparse
import os
import sys

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastadam as fa  # noqa: E402

BF = np.dtype(ml_dtypes.bfloat16)


class _Stepper:
    """One step of ``algorithm`` ("adam", "nadam", "radam") with float32 state
    (:meth:`f32`: fa.adam_step / nadam_step / radam_step) or low-precision state
    (:meth:`lowp`: the ``*_step_lowp`` functions); NAdam's mu_product kept here."""

    def __init__(self, algorithm="adam"):
        self.alg = algorithm
        self.mp = 1.0

    def f32(self, p, g, m, v, t, **kw):
        if self.alg == "nadam":
            self.mp = fa.nadam_step(p, g, m, v, step=t, mu_product=self.mp, **kw)
        else:
            (fa.radam_step if self.alg == "radam" else fa.adam_step)(p, g, m, v, step=t, **kw)

    def lowp(self, p, g, st, t, **kw):
        if self.alg == "nadam":
            self.mp = fa.nadam_step_lowp(p, g, st, step=t, mu_product=self.mp, **kw)
        else:
            (fa.radam_step_lowp if self.alg == "radam" else fa.adam_step_lowp)(
                p, g, st, step=t, **kw)


def _logreg_data(seed=0, n=2000, d=40):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal(d).astype(np.float32)
    y = (X @ w + 4.0 * rng.standard_normal(n) > 0).astype(np.float32)   # noisy labels:
    # the optimum's loss is far from 0, so "within 1%" compares converged losses
    return X, y


def _logreg_loss_grad(w, X, y):
    z = X @ w
    loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
    g = (X.T @ (1.0 / (1.0 + np.exp(-z)) - y) / X.shape[0]).astype(np.float32)
    return loss, g


def train_logreg(state_dtype, steps=400, lr=0.05, algorithm="adam"):
    """Full-batch logistic regression; float32 params; state float32 (adam_step) or low
    (``algorithm``: "adam", "nadam" or "radam")."""
    X, y = _logreg_data()
    w = np.zeros(X.shape[1], np.float32)
    step = _Stepper(algorithm)
    if state_dtype is None:
        m, v = np.zeros_like(w), np.zeros_like(w)
    else:
        st = fa.init_lowp_state(w, state_dtype=state_dtype, algorithm=algorithm)
    losses = []
    for t in range(1, steps + 1):
        loss, g = _logreg_loss_grad(w, X, y)
        losses.append(loss)
        if state_dtype is None:
            step.f32(w, g, m, v, t, lr=lr)
        else:
            step.lowp(w, g, st, t, lr=lr)
    return np.array(losses + [_logreg_loss_grad(w, X, y)[0]])


def _digits():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def train_digits_mlp(state_dtype, epochs=40, lr=3e-3, batch=64, hidden=64, param_mode=None,
                     weight_decay=1e-2, algorithm="adam", seed=0):
    """A 64-hidden-unit ReLU MLP on sklearn's digits, minibatch Adam; returns the training
    loss (full data) before training and after each epoch. float32 params on one flat
    buffer, or with ``param_mode`` ("nearest", "stochastic", "compensation", "master")
    bfloat16 params and gradients (the forward pass reads the bfloat16 values).
    L2 ``weight_decay`` and lr / sqrt(1 + t / 100) make the run settle at a loss away
    from 0 (an over-parameterised net would otherwise drive it towards 0, where relative
    differences say little). ``algorithm``: "adam", "nadam" or "radam"; ``seed``: of the
    initial weights and the minibatch order."""
    X, y = _digits()
    step = _Stepper(algorithm)
    rng = np.random.default_rng(seed)
    d, k = X.shape[1], 10
    sizes = [d * hidden, hidden, hidden * k, k]
    flat = np.zeros(sum(sizes), np.float32)
    flat[:d * hidden] = rng.standard_normal(d * hidden) * np.sqrt(2.0 / d)
    o = d * hidden + hidden
    flat[o:o + hidden * k] = rng.standard_normal(hidden * k) * np.sqrt(1.0 / hidden)
    if param_mode is not None:
        pb = flat.astype(BF)
        flat = pb.astype(np.float32)
    views = np.split(flat, np.cumsum(sizes)[:-1])
    W1, b1, W2, b2 = views[0].reshape(d, hidden), views[1], views[2].reshape(hidden, k), views[3]
    Y = np.eye(k, dtype=np.float32)[y]

    def forward(Xb):
        h = np.maximum(Xb @ W1 + b1, 0)
        z = h @ W2 + b2
        z = z - z.max(axis=1, keepdims=True)
        pr = np.exp(z)
        pr /= pr.sum(axis=1, keepdims=True)
        return h, pr

    def loss_all():
        _, pr = forward(X)
        return float(-np.mean(np.log(pr[np.arange(len(y)), y] + 1e-12)))

    if param_mode is not None:
        kw = {"compensation": {"compensation": True},
              "master": {"master_weights": True}}.get(param_mode, {})
        st = fa.init_lowp_state(pb, state_dtype=state_dtype or "float32", algorithm=algorithm,
                                **kw)
        rounding = "stochastic" if param_mode == "stochastic" else "nearest"
    elif state_dtype is None:
        m, v = np.zeros_like(flat), np.zeros_like(flat)
    else:
        st = fa.init_lowp_state(flat, state_dtype=state_dtype, algorithm=algorithm)
    g = np.zeros_like(flat)
    gv = np.split(g, np.cumsum(sizes)[:-1])
    t = 0
    losses = [loss_all()]
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for s in range(0, len(y), batch):
            idx = order[s:s + batch]
            Xb, Yb = X[idx], Y[idx]
            h, pr = forward(Xb)
            dz = (pr - Yb) / len(idx)
            gv[3][:] = dz.sum(0)
            gv[2][:] = (h.T @ dz).ravel()
            dh = (dz @ W2.T) * (h > 0)
            gv[1][:] = dh.sum(0)
            gv[0][:] = (Xb.T @ dh).ravel()
            t += 1
            lr_t = lr / np.sqrt(1.0 + t / 100.0)
            if param_mode is not None:
                step.lowp(pb, g.astype(BF), st, t, lr=lr_t, rounding=rounding, seed=1,
                          weight_decay=weight_decay)
                flat[...] = pb.astype(np.float32)
            elif state_dtype is None:
                step.f32(flat, g, m, v, t, lr=lr_t, weight_decay=weight_decay)
            else:
                step.lowp(flat, g, st, t, lr=lr_t, weight_decay=weight_decay)
        losses.append(loss_all())
    return np.array(losses)


def _tiny_update_problem(seed=0, n=400, d=16):
    """Least squares whose solution is in [2, 3.5) (bfloat16 ulp 2**-6, half-ulp 0.0078)
    approached with lr = 2e-3 Adam steps: each update is below half an ulp."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d)).astype(np.float32)
    x_star = rng.uniform(2.5, 3.0, d).astype(np.float32)
    b = (A @ x_star + rng.standard_normal(n)).astype(np.float32)
    x0 = (x_star - 0.4).astype(np.float32)
    return A, b, x0


def train_tiny(mode, steps=1500, lr=2e-3):
    A, b, x0 = _tiny_update_problem()
    n = A.shape[0]

    def loss_grad(x32):
        r = A @ x32 - b
        return float(r @ r / n), (2.0 / n * (A.T @ r)).astype(np.float32)

    if mode == "float32":
        x = x0.copy()
        m, v = np.zeros_like(x), np.zeros_like(x)
    else:
        x = x0.astype(BF)
        kw = {"compensation": {"compensation": True}, "master": {"master_weights": True}}.get(mode, {})
        st = fa.init_lowp_state(x, state_dtype="float32", **kw)
    losses = []
    for t in range(1, steps + 1):
        if mode == "float32":
            loss, g = loss_grad(x)
            fa.adam_step(x, g, m, v, step=t, lr=lr)
        else:
            loss, g = loss_grad(x.astype(np.float32))
            fa.adam_step_lowp(x, g.astype(BF), st, step=t, lr=lr,
                              rounding="stochastic" if mode == "stochastic" else "nearest", seed=3)
        losses.append(loss)
    losses.append(loss_grad(x.astype(np.float32))[0])
    return np.array(losses)




def main(argv=None):
    ap = argparse.ArgumentParser(description="loss curves of the low-precision layouts")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "docs", "img", "lowp_loss.png"))
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    runs["digits"] = {
        "float32 state": train_digits_mlp(None),
        "bfloat16 state": train_digits_mlp("bfloat16"),
        "int8 state": train_digits_mlp("int8"),
        "bf16 params, nearest": train_digits_mlp("bfloat16", param_mode="nearest"),
        "bf16 params, stochastic": train_digits_mlp("bfloat16", param_mode="stochastic"),
        "bf16 params, compensation": train_digits_mlp("bfloat16", param_mode="compensation"),
        "bf16 params, master": train_digits_mlp("bfloat16", param_mode="master"),
    }
    runs["logreg"] = {"float32 state": train_logreg(None),
                      "bfloat16 state": train_logreg("bfloat16"),
                      "int8 state": train_logreg("int8")}
    runs["tiny"] = {"float32": train_tiny("float32"), "bf16 nearest": train_tiny("nearest"),
                    "bf16 stochastic": train_tiny("stochastic"),
                    "bf16 compensation": train_tiny("compensation"),
                    "bf16 master": train_tiny("master")}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    titles = {"digits": "digits MLP (minibatch, L2 1e-2): training loss per epoch",
              "logreg": "logistic regression (full batch, lr 0.05)",
              "tiny": "least squares, updates < half a bf16 ulp (lr 2e-3)"}
    for ax, (key, curves) in zip(axes, runs.items()):
        for name, y in curves.items():
            ax.plot(np.arange(len(y)), y, label=name,
                    ls="--" if ("bf16" in name and key != "tiny") else "-")
        ax.set_yscale("log")
        ax.set_title(titles[key], fontsize=9)
        ax.set_xlabel("epoch" if key == "digits" else "step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=90)
    for key, curves in runs.items():
        ref = next(iter(curves.values()))[-1]
        print(key)
        for name, y in curves.items():
            print(f"  {name:28s} final loss {y[-1]:.6f}  ({100 * (y[-1] / ref - 1):+.2f}% vs first)")


if __name__ == "__main__":
    main()
