"""The slow, obvious float64 oracle, written from the formulas in docs/numerics.md
(and Kingma & Ba, Algorithm 1 / end of section 2). No cleverness: every test compares
fastadam against this."""
import numpy as np


def adam_reference(p, g, m, v, vmax=None, *, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                   weight_decay=0.0, decoupled=False, amsgrad=False, maximize=False,
                   bias_correction=True, eps_mode="paper"):
    """One step; returns new (p, m, v, vmax) as float64 arrays (inputs untouched)."""
    p, g, m, v = (np.array(x, dtype=np.float64) for x in (p, g, m, v))
    vmax = None if vmax is None else np.array(vmax, dtype=np.float64)
    b1, b2 = betas
    if maximize:
        g = -g
    if weight_decay != 0.0:
        if decoupled:
            p = p * (1.0 - lr * weight_decay)
        else:
            g = g + weight_decay * p
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * g * g
    v_used = v
    if amsgrad:
        vmax = np.maximum(vmax, v)     # NaN-propagating, like torch.maximum
        v_used = vmax
    if bias_correction:
        bc1 = 1.0 - b1 ** step
        bc2 = 1.0 - b2 ** step
    else:
        bc1 = bc2 = 1.0
    if eps_mode == "paper":
        p = p - (lr / bc1) * m / (np.sqrt(v_used) / np.sqrt(bc2) + eps)
    elif eps_mode == "hat":
        p = p - lr * np.sqrt(bc2) / bc1 * m / (np.sqrt(v_used) + eps)
    else:
        raise ValueError(eps_mode)
    return p, m, v, vmax


def adam_error_scale(p, g, m, v, *, betas=(0.9, 0.999), weight_decay=0.0, lr=1e-3, **_):
    """Magnitudes of the terms that each output is a sum of (float64 arrays): the
    forward-error yardstick for a single step in lower precision. An output computed as
    a sum of terms in a precision with unit roundoff u is within c*u*sum|terms|."""
    p, g, m, v = (np.abs(np.asarray(x, dtype=np.float64)) for x in (p, g, m, v))
    b1, b2 = betas
    g_terms = g + weight_decay * p
    m_terms = b1 * m + (1 - b1) * g_terms
    v_terms = b2 * v + (1 - b2) * g_terms * g_terms
    return m_terms, v_terms


def adamax_reference(p, g, m, u, *, step, lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
                     weight_decay=0.0, maximize=False):
    """One AdaMax step (paper section 7.1, PyTorch semantics); returns (p, m, u)."""
    p, g, m, u = (np.array(x, dtype=np.float64) for x in (p, g, m, u))
    b1, b2 = betas
    if maximize:
        g = -g
    if weight_decay != 0.0:
        g = g + weight_decay * p
    m = b1 * m + (1.0 - b1) * g
    u = np.maximum(b2 * u, np.abs(g) + eps)
    p = p - (lr / (1.0 - b1 ** step)) * m / u
    return p, m, u


def average_reference(pbar, p_new, beta):
    """Temporal averaging (paper section 7.2): pbar = beta * pbar + (1 - beta) * p."""
    return beta * np.asarray(pbar, np.float64) + (1.0 - beta) * np.asarray(p_new, np.float64)


def clip_coef_reference(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_'s factor: min(1, max_norm / (norm + 1e-6))."""
    norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grads))
    return min(1.0, max_norm / (norm + 1e-6)), norm
