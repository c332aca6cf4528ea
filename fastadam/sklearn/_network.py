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
from . import _lazy, _lazy_linear, _lazy_mlp


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

    def _optimizer_params(self):
        lazy = getattr(self, "_lazy", False)
        return (self._weights[1:] if lazy else self._weights) + self._intercepts

    def _new_optimizer(self, state_dtype=False):
        """A fresh optimizer (zero moments). With lazy sparse updates (``_lazy``) the
        first weight layer is not in it: its moments ``_lazy_mv`` (n_features, fan_out,
        2: exp_avg, exp_avg_sq) and step count ``_lazy_t`` live on the estimator, and
        :func:`._lazy.lazy_adam_step` steps its touched rows. With a ``comm`` the optimizer
        is a :class:`fastadam.distributed.ShardedOptimizer` (never with lazy updates: the
        lazy layer's moments would not be shared by the ranks, nor with a low-precision
        state). ``state_dtype``: the optimizer's (default: the estimator's parameter;
        "float32" state of float32 weights is the ordinary path, state_dtype=None)."""
        lazy = getattr(self, "_lazy", False)
        params = self._optimizer_params()
        hyper = {"lr": self.learning_rate_init, "betas": (self.beta_1, self.beta_2),
                 "eps": self.epsilon, "eps_mode": "hat"}
        if state_dtype is False:
            state_dtype = getattr(self, "state_dtype", None)
        if state_dtype == "float32":
            state_dtype = None      # float32 weights (see _fit): their own dtype's state
        comm = getattr(self, "comm", None)
        if comm is None:
            self.optimizer_ = Adam(params, state_dtype=state_dtype, **hyper)
        else:
            if state_dtype is not None:     # _validate_hyperparams refuses it first
                raise ValueError(f"state_dtype={state_dtype!r} cannot be used with comm")
            if lazy:     # _fit resolves sparse_updates to dense with a comm
                raise ValueError("sparse_updates='lazy' cannot be used with comm")
            # Data-parallel (collective): every rank passes its slice of the pooled
            # minibatch gradient, already divided by the pooled weight, so the sum over
            # ranks is the pooled gradient; rank 0's initial weights are broadcast.
            from ..distributed import ShardedOptimizer
            self.optimizer_ = ShardedOptimizer(params, Adam, comm=comm,
                                               grad_reduction="sum", **hyper)
        self._optimizer_comm = comm
        if lazy:
            self._lazy_mv = np.zeros(self._units[:2] + [2], self._flat.dtype)
            self._lazy_t = 0
        else:
            for k in ("_lazy_mv", "_lazy_t"):
                self.__dict__.pop(k, None)

    def _grad_views(self):
        """(weight gradients, intercept gradients) of ``optimizer_.grads``; the first
        weight's entry is None with lazy sparse updates."""
        grads = self.optimizer_.grads
        L = len(self._weights)
        if getattr(self, "_lazy", False):
            return [None] + grads[:L - 1], grads[L - 1:]
        return grads[:L], grads[L:]

    def _train_step(self):
        """The step function of the training loop (after ``_loss_grad``)."""
        if not getattr(self, "_lazy", False):
            return self.optimizer_.step
        return self._lazy_step

    def _scratch(self, k):
        scratch = getattr(self, "_lazy_scratch", None)
        if scratch is None or scratch.k != k:
            scratch = self._lazy_scratch = _lazy.Scratch(k)
        return scratch

    def _lazy_step(self):
        self.optimizer_.step()
        self._lazy_t += 1
        A, D, reg = self._lazy_batch
        self._lazy_batch = None
        Wf = self._dense_weights()[0]
        scratch = self._scratch(D.shape[1])
        lr_t = _lazy.step_lr(self.learning_rate_init, self.beta_1, self.beta_2,
                             self._lazy_t)
        hyper = (float(reg), lr_t, float(self.beta_1), float(self.beta_2),
                 float(self.epsilon))
        if isinstance(A, _lazy_mlp.RowsBatch):
            # the MLP path: the slots and per-nonzero records of batch_forward
            keys, _, touched, hpos, G, qs, qx, qr = scratch.get_batch(0)
            mv = self._lazy_mv
            self._lazy_sq += _lazy_mlp.batch_step(
                D, Wf, mv, mv.reshape(mv.shape[0], -1), *hyper, keys, touched, hpos, G,
                A.nt, qs, qx, qr, A.nq)
            return
        self._lazy_sq += _lazy.lazy_adam_step(
            A.indptr, A.indices, A.data, D, Wf, self._lazy_mv, *hyper,
            *scratch.get(int(A.indptr[-1] - A.indptr[0])))

    def _batched_lazy(self):
        """Whether the minibatch loop's lazy first layer (an MLP's, or a linear model's
        in calls too small for the compiled epoch) takes the two-call path of
        ``_lazy_mlp`` (rows read in place, slots found once, prefetched forward and
        update); else ``take_rows`` + ``csr_forward`` + ``lazy_adam_step`` (the same
        results, tested)."""
        return getattr(self, "_lazy", False)

    def _lazy_first_forward(self, A, W, Z):
        """The lazy first layer's Z = A @ W (A: a CSRBatch or a RowsBatch)."""
        if isinstance(A, _lazy_mlp.RowsBatch):
            X = A.X
            sc = self._scratch(Z.shape[1]).get_batch(A.nnz())
            A.nt, A.nq = _lazy_mlp.batch_forward(X.indptr, X.indices, X.data, A.rows, W,
                                                 Z, *sc)
        else:
            # reads only the weight rows of the batch's features (no copy of W)
            _lazy.csr_forward(A.indptr, A.indices, A.data, W, Z)

    def _compiled_lazy_epoch(self):
        """Whether an epoch runs as one compiled loop
        (:func:`._lazy_linear.lazy_linear_epoch`): lazy updates of a linear model (one
        weight layer) with an in-memory optimizer."""
        return (getattr(self, "_lazy", False) and self._linear and len(self._weights) == 1
                and getattr(self, "_optimizer_comm", None) is None
                and getattr(self.optimizer_, "_lowp", None) is None)

    def _lazy_pack(self, X):
        """The fit-time table of the compiled lazy epoch (``_lazy_linear.table_row``) for the
        CSR matrix X: for each feature present in X, its weights, moments and slot
        marker side by side, from the first weight layer and ``_lazy_mv``; and X's
        column indices renumbered to the table's rows."""
        Wf = self._dense_weights()[0]
        ids, local = _lazy_linear.compact_columns(X.indices, X.shape[1])
        T = _lazy_linear.new_table(ids.shape[0], Wf.shape[1], self._flat.dtype)
        Ti = _lazy_linear.marker_view(T)
        _lazy_linear.pack_table(Wf, self._lazy_mv, ids, T, Ti)
        self._lazy_table = (T, Ti, ids, local)

    def _lazy_unpack(self, moments):
        """The table's weights back into the first weight layer (and its moments into
        ``_lazy_mv`` when ``moments``, which also drops the table)."""
        T, _, ids, _ = self._lazy_table
        _lazy_linear.unpack_table(T, ids, self._dense_weights()[0], self._lazy_mv, moments)
        if moments:
            del self._lazy_table

    def _lazy_epoch(self, X, Y, sw, order, batch_size, ws):
        """One epoch of the lazy linear model in one compiled loop; returns the sum over
        minibatches of (mean loss * rows), like the minibatch loop of ``_epochs``. The
        intercept's Adam moments and step count are read from ``optimizer_`` and written
        back once per epoch (so state_dict, pickling and partial_fit see them)."""
        opt = self.optimizer_
        sd = opt.state_dict()
        st = sd["state"][0]
        dt = self._flat.dtype
        bm = np.ascontiguousarray(st.get("exp_avg", np.zeros_like(self._intercepts[0])), dt)
        bv = np.ascontiguousarray(st.get("exp_avg_sq", np.zeros_like(self._intercepts[0])),
                                  dt)
        k = self._intercepts[0].shape[0]
        scratch = getattr(self, "_lazy_scratch", None)
        if scratch is None or scratch.k != k:
            scratch = self._lazy_scratch = _lazy.Scratch(k)
        row_nnz = np.diff(X.indptr)[order]
        most = int(np.add.reduceat(row_nnz, np.arange(0, order.shape[0], batch_size)).max()) \
            if order.shape[0] else 0
        has_sw = sw is not None
        t0 = self._lazy_t
        T, Ti, _, local = self._lazy_table
        acc, t, self._lazy_sq = _lazy_linear.lazy_linear_epoch(
            X.indptr, local, X.data, Y, sw if has_sw else ws["w"], has_sw, order,
            batch_size, T, Ti, self._intercepts[0], bm, bv,
            bool(getattr(self, "fit_intercept", True)), t0,
            float(self.learning_rate_init), float(self.beta_1), float(self.beta_2),
            float(self.epsilon), float(self.alpha), K.OUT_CODE[self._out_kind],
            float(getattr(self, "huber_delta", 1.0)), float(self._lazy_sq), ws["Z"][0],
            ws["Y"], ws["w"], *scratch.get_epoch(most), k)
        self._lazy_t = t
        if t > t0:
            st["step"] = int(st["step"]) + (t - t0)
            st["exp_avg"], st["exp_avg_sq"] = bm, bv
            opt.load_state_dict(sd)
        return acc

    def _sync_optimizer_hyperparams(self):
        self._sync_state_dtype()
        g = self.optimizer_.param_groups[0]
        g["lr"] = float(self.learning_rate_init)
        g["betas"] = (float(self.beta_1), float(self.beta_2))
        g["eps"] = float(self.epsilon)

    def _sync_state_dtype(self):
        """``state_dtype`` changed since the optimizer was built (set_params between
        partial_fit calls): convert its moments explicitly (to fewer bits they are rounded
        as a step would store them) into an optimizer of the new layout. The checks of
        ``_BaseAdam._check_state_dtype_change`` have passed (float32 weights, dense)."""
        have = getattr(self.optimizer_, "state_dtype", None) or "float32"
        want = getattr(self, "state_dtype", None) or "float32"
        if have == want:
            return
        from ..lowp import convert_state_dict
        old = self.optimizer_
        sd = convert_state_dict(old.state_dict(), state_dtype=want,
                                shapes=[p.shape for p in self._optimizer_params()])
        self._new_optimizer()
        try:
            self.optimizer_.load_state_dict(sd)
        except (TypeError, ValueError):      # pragma: no cover - conversion is checked
            self.optimizer_ = old
            raise

    def __getstate__(self):
        # The optimizer holds raw data addresses of the parameters; pickle its plain
        # state_dict and rebuild it (over fresh views of one buffer) on unpickling.
        # A communicator is never pickled (``comm`` comes back as None), and a sharded
        # optimizer's moments live on all ranks: the copy keeps the parameters and
        # starts fresh moments, like warm_start, if it is trained further.
        state = super().__getstate__()
        if state.get("comm") is not None:
            state = dict(state)
            state["comm"] = None
        state.pop("_optimizer_comm", None)
        if "optimizer_" in state:
            state = dict(state)
            local = getattr(self, "_optimizer_comm", None) is None
            state["optimizer_"] = self.optimizer_.state_dict() if local else None
            state["_param_arrays"] = [np.array(a) for a in self._weights + self._intercepts]
            for k in ("_flat", "_weights", "_intercepts", "_workspace", "_lazy_batch",
                      "_lazy_scratch", "_lazy_table", "coef_", "intercept_", "coefs_", "intercepts_"):
                state.pop(k, None)
        return state

    def __setstate__(self, state):
        state = dict(state)
        arrays = state.pop("_param_arrays", None)
        opt_state = state.get("optimizer_")
        super().__setstate__(state)
        if arrays is not None:
            lazy_state = [state.get(k) for k in ("_lazy_mv", "_lazy_t")]
            self._set_param_arrays(arrays, arrays[0].dtype)
            # the layout the state was saved with (the estimator's state_dtype may have
            # been changed since; the next partial_fit converts it)
            from ..optim.lowp_state import state_dtype_of
            sdt = None if opt_state is None else state_dtype_of(opt_state)
            self._new_optimizer(None if sdt in (None, "float32") else sdt)
            if opt_state is not None:
                self.optimizer_.load_state_dict(opt_state)
            if getattr(self, "_lazy", False):
                self._lazy_mv, self._lazy_t = lazy_state

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
                if l == 0 and getattr(self, "_lazy", False):
                    self._lazy_first_forward(A, W, Z)
                elif sp.issparse(A):
                    Z[...] = A @ W
                else:
                    np.dot(A, W, out=Z)
            else:
                Z = np.ascontiguousarray(A @ W)
            K.bias_activate(Z, b, self._act_code if l < last else 0)
            acts.append(Z)
            A = Z
        return acts

    def _loss_grad(self, Xb, Yb, swb, ws, total=None, l2=True):
        """Batch objective; writes its gradient into ``optimizer_.grads``. None when the
        batch has zero total weight (nothing to learn from it).

        Data-parallel: ``total`` is the pooled minibatch's weight, by which this rank's
        share is divided, and ``l2`` says whether this rank adds the L2 term (one rank
        does); the shares of all ranks then sum to the pooled objective and gradient."""
        n = Xb.shape[0]
        if total is None:
            sw_sum = float(n) if swb is None else float(swb.sum())
            if not sw_sum > 0:
                return None
        else:
            sw_sum = float(total)
        lazy = getattr(self, "_lazy", False)
        if lazy and not hasattr(Xb, "indptr") and not isinstance(Xb, _lazy_mlp.RowsBatch):
            Xb = sp.csr_matrix(Xb)       # dense rows under lazy updates: nonzeros touch
        acts = self._forward(Xb, ws["Z"])
        D = acts[-1]
        loss = K.output_loss_delta(D, Yb, ws["w"] if swb is None else swb, swb is not None,
                                  1.0 / sw_sum, K.OUT_CODE[self._out_kind],
                                  float(getattr(self, "huber_delta", 1.0)))
        grads_w, grads_b = self._grad_views()
        L = len(self._weights)
        Ws = self._dense_weights()
        reg = self.alpha / sw_sum
        sq = 0.0
        for l in range(L - 1, -1, -1):
            A = acts[l]
            gW = grads_w[l]
            if gW is None:
                # lazy first layer: _lazy_step forms the gradient of the touched rows
                # (with their L2 term) and steps them; the L2 loss term uses the running
                # sum of squares of W (kept by _lazy_step, exact at each epoch start).
                self._lazy_batch = (A, D, reg)
                if self.alpha:
                    sq += self._lazy_sq
            elif sp.issparse(A):
                g = A.T @ D
                gW[...] = g.T if self._linear else g
            elif self._linear:
                np.dot(D.T, A, out=gW)
            else:
                np.dot(A.T, D, out=gW)
            W = self._weights[l]
            if self.alpha and l2 and gW is not None:
                w = W.reshape(-1)
                sq += float(np.dot(w, w))
                K.add_scaled(gW.reshape(-1), w, reg)
            if getattr(self, "fit_intercept", True):
                np.sum(D, axis=0, out=grads_b[l])
            else:
                grads_b[l].fill(0)
            if l > 0:
                Dp = ws["D"][l - 1][:n]
                np.dot(D, Ws[l].T, out=Dp)
                K.activation_backward(Dp, acts[l], self._act_code)
                D = Dp
        return (loss + 0.5 * self.alpha * sq) / sw_sum

    def _make_workspace(self, batch_size, dtype, sparse=False):
        units = self._units
        return {"Z": [np.empty((batch_size, u), dtype) for u in units[1:]],
                "D": [np.empty((batch_size, u), dtype) for u in units[1:-1]],
                # a dense copy of the batch rows only for dense X (batch x n_features)
                "X": np.empty((0 if sparse else batch_size, units[0]), dtype),
                "Y": np.empty((batch_size, units[-1]), dtype),
                "w": np.empty(batch_size, dtype)}

    def _raw_output(self, X):
        return self._forward(X)[-1]
