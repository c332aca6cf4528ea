#!/usr/bin/env python
"""Reproduce the experiments of Kingma & Ba, "Adam" (arXiv 1412.6980) at laptop scale.

    python scripts/reproduce_paper.py logreg            # Figure 1 (left)
    python scripts/reproduce_paper.py sparse            # Figure 1 (right)
    python scripts/reproduce_paper.py bias-correction   # Figure 4
    python scripts/reproduce_paper.py all [--quick] [--out DIR] [--seed N]

Each subcommand writes ``<name>.png`` and ``<name>.csv`` into ``--out`` (default
``out/paper``), prints a short table on stdout and progress on stderr. Adam runs use
fastadam (parameters in one flat buffer, gradients written into ``opt.grads``);
SGD with Nesterov momentum and AdaGrad are the plain NumPy baselines below. Gradients
are computed with NumPy (BLAS) and scipy.sparse. The set-up and how it differs from the
paper is in docs/reproduction.md.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time

import numpy as np

import fastadam as fa
from fastadam.schedules import InverseSqrtLR

METHODS = ("adam", "sgd_nesterov", "adagrad")
LABELS = {"adam": "Adam", "sgd_nesterov": "SGD + Nesterov", "adagrad": "AdaGrad"}
COLORS = {"adam": "tab:red", "sgd_nesterov": "tab:blue", "adagrad": "tab:green"}


def progress(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- optimizers
class Adam:
    """fastadam.Adam over one flat buffer with the paper's alpha/sqrt(t) decay."""

    def __init__(self, w, lr, decay=True, **kw):
        self.opt = fa.Adam([w], lr=lr, **kw)
        self.grad = self.opt.grads[0]          # fill in place, then step()
        self.sched = InverseSqrtLR(self.opt) if decay else None

    def step(self):
        self.opt.step()
        if self.sched is not None:
            self.sched.step()


class SGDNesterov:
    """v = mu v + g;  w -= lr_t (g + mu v)  (Sutskever et al. form, = torch nesterov)."""

    def __init__(self, w, lr, momentum=0.9, decay=True):
        self.w, self.lr, self.mu, self.decay = w, lr, momentum, decay
        self.grad = np.zeros_like(w)
        self.v = np.zeros_like(w)
        self.t = 0

    def step(self):
        self.t += 1
        lr = self.lr / math.sqrt(self.t) if self.decay else self.lr
        self.v *= self.mu
        self.v += self.grad
        self.w -= lr * (self.grad + self.mu * self.v)


class AdaGrad:
    """G += g*g;  w -= lr g / (sqrt(G) + eps)  (Duchi et al.). No extra alpha/sqrt(t):
    the growing sum G already decays AdaGrad's steps like 1/sqrt(t) (its regret bound
    uses a constant lr); decaying twice only handicaps it."""

    def __init__(self, w, lr, eps=1e-8, decay=False):
        self.w, self.lr, self.eps, self.decay = w, lr, eps, decay
        self.grad = np.zeros_like(w)
        self.G = np.zeros_like(w)
        self.t = 0

    def step(self):
        self.t += 1
        lr = self.lr / math.sqrt(self.t) if self.decay else self.lr
        self.G += self.grad * self.grad
        self.w -= lr * self.grad / (np.sqrt(self.G) + self.eps)


def make_optimizer(method, w, lr):
    return {"adam": Adam, "sgd_nesterov": SGDNesterov, "adagrad": AdaGrad}[method](w, lr)


# ---------------------------------------------------------------------------- helpers
def limit_blas_threads():
    """The matrices are small: one BLAS thread is faster and kinder to a shared machine."""
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(1)
    except ImportError:
        return None


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def print_table(header, rows):
    cells = [header] + [[c if isinstance(c, str) else f"{c:.4g}" for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print(line(r))


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def grid_search(name, methods, lrs, run):
    """run(method, lr) -> per-epoch training losses. Returns {method: (best lr, curves)}
    with curves {lr: losses}; the best lr has the lowest mean loss over the last 3 epochs
    (diverged runs, NaN, never win)."""
    out = {}
    total, k = len(methods) * len(lrs), 0
    for m in methods:
        curves = {}
        for lr in lrs:
            k += 1
            t0 = time.perf_counter()
            curves[lr] = run(m, lr)
            progress(f"[{name}] {k:3d}/{total} {LABELS[m]:>15s} lr={lr:.3g}: final loss "
                     f"{curves[lr][-1]:.4g} ({time.perf_counter() - t0:.1f}s)")

        def score(lr):
            s = float(np.mean(curves[lr][-3:]))
            return s if math.isfinite(s) else math.inf
        out[m] = (min(lrs, key=score), curves)
    return out


def plot_curves(path, title, results, ylabel, logy=True):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=100)
    for m, (lr, curves) in results.items():
        y = curves[lr]
        ax.plot(np.arange(len(y)), y, color=COLORS[m], label=f"{LABELS[m]} (α={lr:.3g})")
    ax.set_xlabel("iterations over entire dataset (epochs)")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def curve_rows(results):
    rows = []
    for m, (best, curves) in results.items():
        for lr, ys in curves.items():
            for e, y in enumerate(ys):
                rows.append([m, f"{lr:.6g}", int(lr == best), e, f"{y:.8g}"])
    return rows


# ---------------------------------------------------------------------------- logreg
def softmax_xent(logits, y):
    """Mean cross-entropy and softmax probabilities (rows of logits)."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    nll = -np.mean(np.log(np.maximum(z[np.arange(len(y)), y], 1e-300)))
    return nll, z


def cmd_logreg(args):
    """Figure 1 (left): L2-regularised multinomial logistic regression, minibatch 128,
    alpha/sqrt(t) decay, best step size from a grid, the same initialisation for all."""
    from sklearn.datasets import load_digits
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    X, y = load_digits(return_X_y=True)
    X = np.hstack([X / 16.0, np.ones((len(X), 1))])          # pixels in [0, 1] + bias
    perm = rng.permutation(len(X))
    n_test = len(X) // 5
    Xte, yte, Xtr, ytr = X[perm[:n_test]], y[perm[:n_test]], X[perm[n_test:]], y[perm[n_test:]]
    d, k = X.shape[1], 10
    epochs = 8 if args.quick else 45
    lrs = [10.0 ** e for e in ((-3, -2, -1, 0) if args.quick else np.arange(-3.5, 1.01, 0.5))]
    lam, batch = 1e-4, 128
    W0 = 0.01 * rng.standard_normal((d, k))
    reg_mask = np.ones((d, 1))
    reg_mask[-1] = 0.0                                          # no decay on the bias row

    def loss(W):
        nll, _ = softmax_xent(Xtr @ W, ytr)
        return nll + 0.5 * lam * float(np.sum((W * reg_mask) ** 2))

    def run(method, lr):
        flat, (W,) = fa.flatten([W0])
        opt = make_optimizer(method, flat, lr)
        G = opt.grad.reshape(d, k)
        Y = np.zeros((batch, k))
        order_rng = np.random.default_rng(args.seed + 1)       # same batches for all runs
        losses = [loss(W)]
        for _ in range(epochs):
            order = order_rng.permutation(len(Xtr))
            for b in range(len(Xtr) // batch):
                idx = order[b * batch:(b + 1) * batch]
                xb = Xtr[idx]
                _, P = softmax_xent(xb @ W, ytr[idx])
                Y.fill(0.0)
                Y[np.arange(batch), ytr[idx]] = 1.0
                P -= Y
                np.dot(xb.T, P, out=G)
                G *= 1.0 / batch
                G += lam * reg_mask * W
                opt.step()
                if not np.isfinite(flat).all():
                    return losses + [math.nan] * (epochs + 1 - len(losses))
            losses.append(loss(W))
        run.test_acc[(method, lr)] = float(np.mean(np.argmax(Xte @ W, axis=1) == yte))
        return losses
    run.test_acc = {}

    results = grid_search("logreg", METHODS, lrs, run)
    os.makedirs(args.out, exist_ok=True)
    write_csv(os.path.join(args.out, "logreg.csv"),
              ["method", "lr", "selected", "epoch", "train_loss"], curve_rows(results))
    plot_curves(os.path.join(args.out, "logreg.png"),
                "Logistic regression, digits (8x8), minibatch 128\nα/√t decay for Adam and SGD; AdaGrad constant α",
                results, "training cost (NLL + L2)")
    rows = []
    for m, (lr, curves) in results.items():
        c = curves[lr]
        rows.append([LABELS[m], lr, c[1], c[min(5, epochs)], c[-1],
                     run.test_acc.get((m, lr), math.nan)])
    print(f"logreg: digits {len(Xtr)} train / {len(Xte)} test, {epochs} epochs, "
          f"{len(lrs)} step sizes per method")
    print_table(["method", "best alpha", "loss@1", f"loss@{min(5, epochs)}",
                 f"loss@{epochs}", "test acc"], rows)
    print(f"logreg: {time.perf_counter() - t_start:.1f}s")
    return results


# ---------------------------------------------------------------------------- sparse
def make_bow(rng, n_docs, vocab, doc_len=230, features="tfidf"):
    """Reproducible bag-of-words data: Zipf word frequencies (1/(rank+3)), ~doc_len words
    per document, labels from a sparse linear "sentiment" model (20% of the words, none
    of the 50 most frequent) with logistic label noise. Features are word presence
    (``binary``) or presence times idf = log(n_docs / document frequency) (``tfidf``)."""
    import scipy.sparse as sp
    p = 1.0 / (np.arange(vocab) + 3.0)
    p /= p.sum()
    lengths = rng.poisson(doc_len, n_docs)
    words = rng.choice(vocab, size=lengths.sum(), p=p)
    rows = np.repeat(np.arange(n_docs), lengths)
    X = sp.csr_matrix((np.ones(len(words)), (rows, words)), shape=(n_docs, vocab))
    X.data[:] = 1.0                                            # presence, not counts
    w_true = np.where(rng.random(vocab) < 0.2, rng.standard_normal(vocab), 0.0)
    w_true[:50] = 0.0                                          # stop words carry no sentiment
    s = X @ w_true
    s = 3.0 * (s - s.mean()) / s.std()
    y = (rng.random(n_docs) < 1.0 / (1.0 + np.exp(-s))).astype(np.float64)
    if features == "tfidf":
        df = np.bincount(X.indices, minlength=vocab) + 1.0
        X = sp.csr_matrix(X @ sp.diags(np.log(n_docs / df)))
    return X, y


def cmd_sparse(args):
    """Figure 1 (right): logistic regression on sparse bag-of-words features with 50%
    dropout noise on the inputs; alpha/sqrt(t) decay; best step size from a grid."""
    import scipy.sparse as sp
    from scipy.special import expit
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    vocab = 2000 if args.quick else 10000
    n_docs = 1500 if args.quick else 10000
    epochs = 6 if args.quick else 30
    lrs = [10.0 ** e for e in ((-2, -1, 0) if args.quick else np.arange(-3.0, 1.51, 0.5))]
    X, y = make_bow(rng, n_docs, vocab, features=args.features)
    X = sp.hstack([X, np.ones((n_docs, 1))], format="csr")   # bias feature
    d, lam, batch, keep = vocab + 1, 1e-5, 128, 0.5

    def loss(w):
        s = X @ w
        return float(np.mean(np.logaddexp(0.0, s) - y * s)) + 0.5 * lam * float(w[:-1] @ w[:-1])

    def run(method, lr):
        flat = fa.flatten([np.zeros(d)])[0]
        opt = make_optimizer(method, flat, lr)
        drop_rng = np.random.default_rng(args.seed + 2)        # same batches and masks
        losses = [loss(flat)]
        for _ in range(epochs):
            order = drop_rng.permutation(n_docs)
            for b in range(n_docs // batch):
                idx = order[b * batch:(b + 1) * batch]
                xb = X[idx]
                xb.data *= (drop_rng.random(xb.nnz) < keep) / keep   # inverted dropout
                r = expit(xb @ flat) - y[idx]
                opt.grad[:] = xb.T @ r
                opt.grad *= 1.0 / batch
                opt.grad[:-1] += lam * flat[:-1]
                opt.step()
                if not np.isfinite(flat).all():
                    return losses + [math.nan] * (epochs + 1 - len(losses))
            losses.append(loss(flat))
        return losses

    results = grid_search("sparse", METHODS, lrs, run)
    os.makedirs(args.out, exist_ok=True)
    write_csv(os.path.join(args.out, "sparse.csv"),
              ["method", "lr", "selected", "epoch", "train_loss"], curve_rows(results))
    plot_curves(os.path.join(args.out, "sparse.png"),
                f"Sparse bag-of-words ({vocab} words, {args.features}), 50% dropout",
                results, "training cost (NLL + L2)")
    rows = [[LABELS[m], lr, c[lr][1], c[lr][min(5, epochs)], c[lr][-1]]
            for m, (lr, c) in results.items()]
    print(f"sparse: {n_docs} synthetic documents, {vocab} words, {args.features} features "
          f"({X.nnz / n_docs:.0f} nonzeros/doc), {epochs} epochs, 50% input dropout")
    print_table(["method", "best alpha", "loss@1", f"loss@{min(5, epochs)}",
                 f"loss@{epochs}"], rows)
    print(f"sparse: {time.perf_counter() - t_start:.1f}s")
    return results


# ---------------------------------------------------------------------------- bias correction
def cmd_bias_correction(args):
    """Figure 4: a small autoencoder on digits (stand-in for the paper's VAE) trained with
    Adam, beta1 in {0, 0.9}, beta2 in {0.99, 0.999, 0.9999}, with and without bias
    correction, over step sizes; training loss after a short and a long run."""
    from sklearn.datasets import load_digits
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    X = load_digits().data / 16.0
    n, batch = len(X), 128
    steps_per_epoch = n // batch
    short, long_ = (2, 10) if args.quick else (10, 100)
    log_lrs = [-4.0, -3.0, -2.0, -1.0] if args.quick else list(np.arange(-5.0, -0.99, 0.5))
    betas1, betas2 = (0.0, 0.9), (0.99, 0.999, 0.9999)
    sizes = [64, 64, 8, 64, 64]                   # 64 -> 64 (tanh) -> 8 -> 64 (tanh) -> 64
    shapes = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        shapes += [(a, b), (b,)]
    init = [rng.standard_normal(s) / math.sqrt(s[0]) if len(s) == 2 else np.zeros(s)
            for s in shapes]

    def forward_backward(P, xb, grads=None):
        """BCE reconstruction loss summed over pixels, mean over the batch; gradients
        into ``grads`` when given."""
        W1, b1, W2, b2, W3, b3, W4, b4 = P
        h1 = np.tanh(xb @ W1 + b1)
        z = h1 @ W2 + b2
        h3 = np.tanh(z @ W3 + b3)
        s = h3 @ W4 + b4
        loss = float(np.mean(np.sum(np.logaddexp(0.0, s) - xb * s, axis=1)))
        if grads is None:
            return loss
        g1, gb1, g2, gb2, g3, gb3, g4, gb4 = grads
        ds = (1.0 / (1.0 + np.exp(-s)) - xb) / len(xb)
        np.dot(h3.T, ds, out=g4)
        gb4[:] = ds.sum(axis=0)
        dh3 = (ds @ W4.T) * (1.0 - h3 * h3)
        np.dot(z.T, dh3, out=g3)
        gb3[:] = dh3.sum(axis=0)
        dz = dh3 @ W3.T
        np.dot(h1.T, dz, out=g2)
        gb2[:] = dz.sum(axis=0)
        dh1 = (dz @ W2.T) * (1.0 - h1 * h1)
        np.dot(xb.T, dh1, out=g1)
        gb1[:] = dh1.sum(axis=0)
        return loss

    def run(beta1, beta2, bc, lr):
        flat, P = fa.flatten(init)
        opt = fa.Adam(P, lr=lr, betas=(beta1, beta2), bias_correction=bc)
        order_rng = np.random.default_rng(args.seed + 3)
        out = {}
        for epoch in range(1, long_ + 1):
            order = order_rng.permutation(n)
            for b in range(steps_per_epoch):
                forward_backward(P, X[order[b * batch:(b + 1) * batch]], opt.grads)
                opt.step()
            if epoch in (short, long_):
                L = forward_backward(P, X) if np.isfinite(flat).all() else math.nan
                out[epoch] = L
        return out

    configs = [(b1, b2, bc, lg) for b2 in betas2 for b1 in betas1 for bc in (True, False)
               for lg in log_lrs]
    rows = []
    for k, (b1, b2, bc, lg) in enumerate(configs, 1):
        t0 = time.perf_counter()
        res = run(b1, b2, bc, 10.0 ** lg)
        rows.append([b1, b2, int(bc), round(lg, 2), res[short], res[long_]])
        progress(f"[bias-correction] {k:3d}/{len(configs)} beta1={b1} beta2={b2} "
                 f"bias_correction={bc!s:5} log10(lr)={lg:+.1f}: loss {res[short]:.3f} "
                 f"-> {res[long_]:.3f} ({time.perf_counter() - t0:.1f}s)")
    init_loss = forward_backward(init, X)
    os.makedirs(args.out, exist_ok=True)
    write_csv(os.path.join(args.out, "bias_correction.csv"),
              ["beta1", "beta2", "bias_correction", "log10_lr", f"loss_epoch{short}",
               f"loss_epoch{long_}"], rows)

    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(9.0, 5.2), dpi=90, sharex=True)
    cap = 1.1 * init_loss
    for r, (col, ep) in enumerate(((4, short), (5, long_))):
        for c, b2 in enumerate(betas2):
            ax = axes[r, c]
            for b1 in betas1:
                for bc in (True, False):
                    pts = [(x[3], x[col]) for x in rows if x[0] == b1 and x[1] == b2
                           and x[2] == int(bc)]
                    xs = [p[0] for p in pts]
                    ys = [min(p[1], cap) if math.isfinite(p[1]) else cap for p in pts]
                    ax.plot(xs, ys, color="tab:green" if bc else "tab:red",
                            ls="-" if b1 else "--", marker="o", ms=3,
                            label=f"β1={b1:g}, {'with' if bc else 'no'} correction")
            ax.set_title(f"β2={b2}, after {ep} epochs", fontsize=9)
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel("training loss (BCE)")
            if r == 1:
                ax.set_xlabel("log10(α)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Bias correction (cf. paper Fig. 4): autoencoder on digits; "
                 f"losses capped at {cap:.0f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "bias_correction.png"))
    plt.close(fig)

    table = []
    for b2 in betas2:
        for bc in (True, False):
            sel = [x for x in rows if x[1] == b2 and x[2] == int(bc)]
            fin = [x for x in sel if math.isfinite(x[5])]
            best = min(fin, key=lambda x: x[5]) if fin else None
            worst = max(x[5] if math.isfinite(x[5]) else math.inf for x in sel)
            table.append([f"{b2}", "yes" if bc else "no",
                          min((x[4] for x in fin), default=math.nan),
                          best[5] if best else math.nan,
                          f"1e{best[3]:g}" if best else "-", f"{best[0]:g}" if best else "-",
                          worst])
    print(f"bias-correction: autoencoder {'-'.join(map(str, sizes))} on digits ({n} images), "
          f"{steps_per_epoch} steps/epoch; initial loss {init_loss:.2f}")
    print_table(["beta2", "bias corr", f"best@{short}", f"best@{long_}", "best alpha",
                 "beta1", f"worst@{long_}"], table)
    print(f"bias-correction: {time.perf_counter() - t_start:.1f}s")
    return rows


# ---------------------------------------------------------------------------- main
COMMANDS = {"logreg": cmd_logreg, "sparse": cmd_sparse, "bias-correction": cmd_bias_correction}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, fn in list(COMMANDS.items()) + [("all", None)]:
        p = sub.add_parser(name, help=(fn.__doc__ or "run every reproduction").split("\n")[0])
        p.add_argument("--out", default=os.path.join("out", "paper"),
                       help="output folder (default: out/paper)")
        p.add_argument("--quick", action="store_true",
                       help="tiny sizes and grids (seconds; a smoke test, not a result)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        if name in ("sparse", "all"):
            p.add_argument("--features", choices=("tfidf", "binary"), default="tfidf",
                           help="sparse: word presence weighted by idf (default) or 0/1")
    args = ap.parse_args(argv)
    limits = limit_blas_threads()
    try:
        names = list(COMMANDS) if args.command == "all" else [args.command]
        out = {}
        for name in names:
            out[name] = COMMANDS[name](args)
        return out
    finally:
        if limits is not None:
            limits.restore_original_limits()


if __name__ == "__main__":
    main()
