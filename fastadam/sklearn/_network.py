"""The model of every estimator: a stack of dense layers whose weights and intercepts are
views of one flat buffer (weights first), the forward pass, and the backward pass that
writes the minibatch gradient straight into the optimizer's preallocated ``grads`` views.
Linear models are the one-layer case with ``coef_`` stored as (n_outputs, n_features).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..flat import flatten
from ..optim import Adam
from . import _kernels as K


class _Network:
    """Parameters, optimizer and forward/backward passes (mixed into the estimators)."""

    _linear = False          # linear models store coef_ as (n_outputs, n_features)

    def _hidden_sizes(self):
        if self._linear:
            return []
        s = self.hidden_layer_sizes
        return [int(x) for x in s] if hasattr(s, "__iter__") else [int(s)]

    # ---- parameters --------------------------------------------------------------------
    def _allocate(self, n_features, n_outputs, dtype, rng):
        """Create the flat parameter buffer, publish its views and build the optimizer."""
        units = [n_features] + self._hidden_sizes() + [n_outputs]
        self._units = units
        arrays_w, arrays_b = [], []
        for fan_in, fan_out in zip(units[:-1], units[1:]):
            if self._linear:
                arrays_w.append(np.zeros((fan_out, fan_in)))
                arrays_b.append(np.zeros(fan_out))
            else:
                # Glorot-uniform like scikit-learn's MLP, same draws in the same order.
                factor = 2.0 if self.activation == "logistic" else 6.0
                bound = np.sqrt(factor / (fan_in + fan_out))
                arrays_w.append(rng.uniform(-bound, bound, (fan_in, fan_out)))
                arrays_b.append(rng.uniform(-bound, bound, fan_out))
        self._set_param_arrays(arrays_w + arrays_b, dtype)
        self._new_optimizer()

    def _set_param_arrays(self, arrays, dtype):
        self._flat, views = flatten(arrays, dtype=dtype)
        n = len(arrays) // 2
        self._weights, self._intercepts = views[:n], views[n:]
        self._publish()

    def _new_optimizer(self, state_dtype=False):
        if state_dtype is False:
            state_dtype = getattr(self, "state_dtype", None)
        if state_dtype is not None and self._flat.dtype != np.float32:
            raise ValueError(f"state_dtype={state_dtype!r} needs float32 weights, but this "
                             f"estimator was fitted in {self._flat.dtype}; refit it "
                             "(fit with warm_start=False)")
        self.optimizer_ = Adam(self._weights + self._intercepts, lr=self.learning_rate_init,
                               betas=(self.beta_1, self.beta_2), eps=self.epsilon,
                               eps_mode="hat", state_dtype=state_dtype)

    def _sync_optimizer_hyperparams(self):
        want = getattr(self, "state_dtype", None)
        if (self.optimizer_.state_dtype or "float32") != (want or "float32"):
            # state_dtype changed between partial_fit calls: convert the moments
            from ..lowp import convert_state_dict
            sd = convert_state_dict(self.optimizer_.state_dict(),
                                    state_dtype=want or "float32",
                                    shapes=[p.shape for p in self._weights + self._intercepts])
            old = self.optimizer_
            self._new_optimizer()
            try:
                self.optimizer_.load_state_dict(sd)
            except (TypeError, ValueError):
                self.optimizer_ = old
                raise
        g = self.optimizer_.param_groups[0]
        g["lr"] = float(self.learning_rate_init)
        g["betas"] = (float(self.beta_1), float(self.beta_2))
        g["eps"] = float(self.epsilon)

    def __getstate__(self):
        # The optimizer holds raw data addresses of the parameters; pickle its plain
        # state_dict and rebuild it (over fresh views of one buffer) on unpickling.
        state = super().__getstate__()
        if "optimizer_" in state:
            state = dict(state)
            state["optimizer_"] = self.optimizer_.state_dict()
            state["_param_arrays"] = [np.array(a) for a in self._weights + self._intercepts]
            for k in ("_flat", "_weights", "_intercepts", "_workspace",
                      "coef_", "intercept_", "coefs_", "intercepts_"):
                state.pop(k, None)
        return state

    def __setstate__(self, state):
        state = dict(state)
        arrays = state.pop("_param_arrays", None)
        opt_state = state.get("optimizer_")
        super().__setstate__(state)
        if arrays is not None:
            self._set_param_arrays(arrays, arrays[0].dtype)
            from ..optim.lowp import state_dtype_of
            sdt = state_dtype_of(opt_state)
            self._new_optimizer(None if sdt == "float32" else sdt)
            self.optimizer_.load_state_dict(opt_state)

    # ---- forward / backward ------------------------------------------------------------
    @property
    def _act_code(self):
        return K.ACT_CODE[getattr(self, "activation", "identity")]

    def _dense_weights(self):
        """Weights as (fan_in, fan_out) arrays (a transposed view for linear models)."""
        return [W.T for W in self._weights] if self._linear else self._weights

    def _forward(self, X, buffers=None):
        """Activations of every layer for X; the last entry holds the output layer's
        pre-activations. ``buffers``: optional preallocated (rows >= n) arrays."""
        n = X.shape[0]
        acts = [X]
        A = X
        Ws = self._dense_weights()
        last = len(Ws) - 1
        for l, (W, b) in enumerate(zip(Ws, self._intercepts)):
            if buffers is not None:
                Z = buffers[l][:n]
                if sp.issparse(A):
                    Z[...] = A @ W
                else:
                    np.dot(A, W, out=Z)
            else:
                Z = np.ascontiguousarray(A @ W)
            K.bias_activate(Z, b, self._act_code if l < last else 0)
            acts.append(Z)
            A = Z
        return acts

    def _loss_grad(self, Xb, Yb, swb, ws):
        """Batch objective; writes its gradient into ``optimizer_.grads``. None when the
        batch has zero total weight (nothing to learn from it)."""
        n = Xb.shape[0]
        sw_sum = float(n) if swb is None else float(swb.sum())
        if not sw_sum > 0:
            return None
        acts = self._forward(Xb, ws["Z"])
        D = acts[-1]
        loss = K.output_loss_delta(D, Yb, ws["w"] if swb is None else swb, swb is not None,
                                  1.0 / sw_sum, K.OUT_CODE[self._out_kind],
                                  float(getattr(self, "huber_delta", 1.0)))
        grads = self.optimizer_.grads
        L = len(self._weights)
        Ws = self._dense_weights()
        reg = self.alpha / sw_sum
        sq = 0.0
        for l in range(L - 1, -1, -1):
            A = acts[l]
            gW = grads[l]
            if sp.issparse(A):
                g = A.T @ D
                gW[...] = g.T if self._linear else g
            elif self._linear:
                np.dot(D.T, A, out=gW)
            else:
                np.dot(A.T, D, out=gW)
            W = self._weights[l]
            if self.alpha:
                w = W.reshape(-1)
                sq += float(np.dot(w, w))
                K.add_scaled(gW.reshape(-1), w, reg)
            if getattr(self, "fit_intercept", True):
                np.sum(D, axis=0, out=grads[L + l])
            else:
                grads[L + l].fill(0)
            if l > 0:
                Dp = ws["D"][l - 1][:n]
                np.dot(D, Ws[l].T, out=Dp)
                K.activation_backward(Dp, acts[l], self._act_code)
                D = Dp
        return (loss + 0.5 * self.alpha * sq) / sw_sum

    def _make_workspace(self, batch_size, dtype):
        units = self._units
        return {"Z": [np.empty((batch_size, u), dtype) for u in units[1:]],
                "D": [np.empty((batch_size, u), dtype) for u in units[1:-1]],
                "X": np.empty((batch_size, units[0]), dtype),
                "Y": np.empty((batch_size, units[-1]), dtype),
                "w": np.empty(batch_size, dtype)}

    def _raw_output(self, X):
        return self._forward(X)[-1]
