"""fastadam.torch.Adam.step() against torch.optim.Adam(fused=True): models of 1e5-1e7
float32 parameters in 10 or 100 tensors, fresh gradient tensors before every step (as
after zero_grad() and a backward pass). Skipped when torch is not installed."""
import numpy as np


def _torch():
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed")   # asv: skip
    return torch


class TorchStep:
    params = [[(10**5, 10), (10**6, 10), (10**6, 100), (10**7, 100)],
              ["fastadam", "torch_fused"]]
    param_names = ["params_tensors", "optimizer"]
    timeout = 300

    def setup(self, case, optimizer):
        torch = _torch()
        n, k = case
        g = torch.Generator().manual_seed(0)
        self.ps = [torch.randn(n // k, generator=g).requires_grad_() for _ in range(k)]
        self.grads = [torch.randn(n // k, generator=g) * 1e-3 for _ in range(k)]
        if optimizer == "fastadam":
            from fastadam.torch import Adam
            self.opt = Adam(self.ps, lr=1e-3)
        else:
            self.opt = torch.optim.Adam(self.ps, lr=1e-3, fused=True)
        for _ in range(2):                                   # JIT, first-touch, state
            self._grads()
            self.opt.step()

    def _grads(self):
        for p, g in zip(self.ps, self.grads):
            p.grad = g.clone()

    def time_step(self, case, optimizer):
        self._grads()          # a clone costs far less than the step; kept for realism
        self.opt.step()


class TorchTrainingStep:
    """A whole training step (zero_grad, forward, backward, step) of a 10-tensor MLP."""
    params = [["fastadam", "torch_fused"]]
    param_names = ["optimizer"]
    timeout = 300

    def setup(self, optimizer):
        torch = _torch()
        torch.manual_seed(0)
        layers, width = [], 64
        for _ in range(4):
            layers += [torch.nn.Linear(width, 256), torch.nn.ReLU()]
            width = 256
        self.model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))
        rng = np.random.default_rng(0)
        self.x = torch.tensor(rng.standard_normal((64, 64)), dtype=torch.float32)
        self.y = torch.tensor(rng.integers(0, 10, 64))
        if optimizer == "fastadam":
            from fastadam.torch import Adam
            self.opt = Adam(self.model.parameters(), lr=1e-3)
        else:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)
        self.F = torch.nn.functional
        for _ in range(2):
            self.time_training_step(optimizer)

    def time_training_step(self, optimizer):
        self.opt.zero_grad()
        self.F.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()
