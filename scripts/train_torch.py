"""Train real torch models with fastadam.torch.Adam and torch.optim.Adam(fused=True).

    python3 scripts/train_torch.py [mlp|lm|all] [--steps N] [--out DIR] [--plot PNG]

* ``mlp``: an MLP (64-256-256-256-256-10, 10 tensors, 215k parameters) on scikit-learn's
  digits, minibatches of 64.
* ``lm``: a character-level transformer language model (12 pre-norm layers, d=256,
  9.6M parameters in 152 tensors) on text from Python's own standard library sources
  (read from this interpreter's installation: no download).

Both optimizers start from the same weights and see the same batches, stepping in
lockstep (which one goes first alternates, so a busy machine slows both alike). Written
per task: the loss curves, the median optimizer.step() time and the median whole training
step (zero_grad + forward + backward + step), as JSON in --out and as a plot.
"""
from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import sys
import sysconfig
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import fastadam  # noqa: E402
from fastadam.torch import Adam  # noqa: E402


# ----------------------------------------------------------------------------- tasks
def mlp_task(seed=0, batch=64):
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(seed)
    layers, width = [], 64
    for _ in range(4):
        layers += [torch.nn.Linear(width, 256), torch.nn.ReLU()]
        width = 256
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))
    rng = np.random.default_rng(seed)

    def batches():
        while True:
            for idx in np.array_split(rng.permutation(len(X)), len(X) // batch):
                yield X[idx], y[idx]

    def loss_fn(m, b):
        return torch.nn.functional.cross_entropy(m(b[0]), b[1])
    return model, batches(), loss_fn, 1e-3


def stdlib_text(max_chars=2_000_000):
    """Text of this Python's standard library sources, printable ASCII only."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    parts, n = [], 0
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            s = fh.read()
        s = "".join(c if (32 <= ord(c) < 127 or c == "\n") else "?" for c in s)
        parts.append(s)
        n += len(s)
        if n >= max_chars:
            break
    return "".join(parts)[:max_chars]


class CharLM(torch.nn.Module):
    def __init__(self, vocab, d=256, layers=12, heads=4, ff=1024, seq=64):
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Parameter(torch.zeros(seq, d))
        layer = torch.nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True,
                                                 norm_first=True)
        self.body = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab)
        self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(seq))

    def forward(self, x):
        h = self.tok(x) + self.pos[: x.shape[1]]
        h = self.body(h, mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True)
        return self.head(self.norm(h))


def lm_task(seed=0, batch=8, seq=64):
    text = stdlib_text()
    chars = sorted(set(text))
    data = torch.tensor(np.searchsorted(np.array(chars), np.array(list(text))),
                        dtype=torch.long)
    torch.manual_seed(seed)
    model = CharLM(len(chars), seq=seq)
    rng = np.random.default_rng(seed)

    def batches():
        while True:
            starts = rng.integers(0, len(data) - seq - 1, size=batch)
            idx = torch.tensor(starts)[:, None] + torch.arange(seq + 1)
            chunk = data[idx]
            yield chunk[:, :-1], chunk[:, 1:]

    def loss_fn(m, b):
        logits = m(b[0])
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 b[1].reshape(-1))
    return model, batches(), loss_fn, 1e-3


TASKS = {"mlp": mlp_task, "lm": lm_task}


# ----------------------------------------------------------------------------- training
def train(task, steps):
    model, batches, loss_fn, lr = TASKS[task]()
    twin = copy.deepcopy(model)
    runs = {"fastadam": (model, Adam(model.parameters(), lr=lr)),
            "torch_fused": (twin, torch.optim.Adam(twin.parameters(), lr=lr, fused=True))}
    out = {k: {"loss": [], "step_s": [], "train_step_s": []} for k in runs}
    names = list(runs)
    for t in range(steps):
        batch = next(batches)
        for name in (names if t % 2 == 0 else names[::-1]):
            m, opt = runs[name]
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = loss_fn(m, batch)
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            rec = out[name]
            rec["loss"].append(loss.item())
            rec["step_s"].append(t2 - t1)
            rec["train_step_s"].append(t2 - t0)
    n_params = sum(p.numel() for p in model.parameters())
    n_tensors = len(list(model.parameters()))
    summary = {"task": task, "steps": steps, "n_params": n_params, "n_tensors": n_tensors,
               "torch_threads": torch.get_num_threads(),
               "numba_threads": fastadam.get_num_threads(),
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)")}
    skip = min(3, steps - 1)        # first steps: compilation, allocation
    for name, rec in out.items():
        summary[name] = {"median_step_s": float(np.median(rec["step_s"][skip:])),
                         "median_train_step_s": float(np.median(rec["train_step_s"][skip:])),
                         "final_loss": float(np.mean(rec["loss"][-10:]))}
    summary["step_speedup"] = (summary["torch_fused"]["median_step_s"]
                               / summary["fastadam"]["median_step_s"])
    summary["train_step_speedup"] = (summary["torch_fused"]["median_train_step_s"]
                                     / summary["fastadam"]["median_train_step_s"])
    return summary, out


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.8), squeeze=False)
    for ax, (summary, curves) in zip(axes[0], results):
        for name, style in (("torch_fused", dict(color="C1", lw=3, alpha=0.5)),
                            ("fastadam", dict(color="C0", lw=1))):
            loss = np.array(curves[name]["loss"])
            label = {"fastadam": "fastadam.torch.Adam",
                     "torch_fused": "torch.optim.Adam(fused=True)"}[name]
            ax.plot(np.arange(1, len(loss) + 1), loss, label=label, **style)
        title = {"mlp": "MLP on digits", "lm": "char transformer LM"}[summary["task"]]
        ax.set_title(f"{title}: {summary['n_params'] / 1e6:.2f}M params, "
                     f"{summary['n_tensors']} tensors", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        fa_, tf = summary["fastadam"], summary["torch_fused"]
        unit, k = ("ms", 1e3) if tf["median_train_step_s"] < 1 else ("s", 1)
        ax.text(0.02, 0.03, "median step(): fastadam {:.2f} ms, torch fused {:.2f} ms\n"
                "median training step: {:.3g} {u}, {:.3g} {u}".format(
                    fa_["median_step_s"] * 1e3, tf["median_step_s"] * 1e3,
                    fa_["median_train_step_s"] * k, tf["median_train_step_s"] * k, u=unit),
                transform=ax.transAxes, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", nargs="?", default="all", choices=["mlp", "lm", "all"])
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps per optimizer (default: mlp 300, lm 60)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (fastadam follows; default: torch's)")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "torch"))
    ap.add_argument("--plot", default=None, help="PNG path (default: OUT/training.png)")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the plot from the JSON files in --out")
    args = ap.parse_args(argv)
    tasks = ["mlp", "lm"] if args.task == "all" else [args.task]
    if args.replot:
        results = []
        for task in tasks:
            with open(os.path.join(args.out, f"{task}.json")) as f:
                d = json.load(f)
            results.append((d["summary"], d["curves"]))
        plot(results, args.plot or os.path.join(args.out, "training.png"))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    results = []
    for task in tasks:
        steps = args.steps or {"mlp": 300, "lm": 60}[task]
        summary, curves = train(task, steps)
        results.append((summary, curves))
        print(json.dumps(summary, indent=1), flush=True)
        with open(os.path.join(args.out, f"{task}.json"), "w") as f:
            json.dump({"summary": summary, "curves": curves}, f)
    plot(results, args.plot or os.path.join(args.out, "training.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
