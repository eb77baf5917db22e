"""Independent float64 NumPy references for the per-token functions of ``opd_jax.objectives``.

Written from the math spec (``/work/shared/reference/objectives.md``) and the docstrings'
formulas, not from the JAX code: plain NumPy, float64, loops where they read better. Only the
conventions were taken from the library (argument names, ``where=`` = "False positions give 0",
the sparse-teacher fill rule, which axis is which).

Gradients are with respect to the *student logits* ``z`` (``p = softmax(z / tau)``), so every
analytic gradient carries the chain-rule factor ``1 / tau``. The ones the spec states
(objectives.md §0, §8) are used as given; the others are derived here, each in its docstring,
and :func:`numerical_grad` (central differences, float64) cross-checks all of them in the tests.

Top-k sets use ``np.argsort(-x, kind="stable")`` (ties: the lower id first); test inputs are
continuous random logits, so ties do not occur.
"""

import math
from typing import NamedTuple

import numpy as np


# --------------------------------------------------------------------------------------------
# helpers


def f64(x):
    return np.asarray(x, dtype=np.float64)


def masked(value, where):
    """``where=`` convention: False positions give exactly 0."""
    value = f64(value)
    return value if where is None else np.where(np.asarray(where, bool), value, 0.0)


def log_softmax(z, temperature=1.0, where=None):
    """``log softmax(z / tau)`` over the last axis; masked rows are replaced by zeros first."""
    z = f64(z)
    if where is not None:
        z = np.where(np.asarray(where, bool)[..., None], z, 0.0)
    x = z / temperature
    mx = np.max(x, axis=-1, keepdims=True)
    return x - mx - np.log(np.sum(np.exp(x - mx), axis=-1, keepdims=True))


def kl(p, q):
    """``KL(p || q) = sum_v p (log p - log q)`` over the last axis, with ``0 log 0 = 0``."""
    p, q = f64(p), f64(q)
    out = np.zeros(p.shape[:-1])
    for idx in np.ndindex(*p.shape[:-1]):
        s = 0.0
        for pv, qv in zip(p[idx], q[idx]):
            if pv > 0:
                s += pv * (math.log(pv) - math.log(qv))
        out[idx] = s
    return out


def entropy_of(p):
    p = f64(p)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def softmax_chain(p, g, temperature=1.0):
    """Given ``g = dL/dp`` for ``p = softmax(z / tau)``: ``dL/dz = p (g - <p, g>) / tau``."""
    p, g = f64(p), f64(g)
    return p * (g - np.sum(p * g, axis=-1, keepdims=True)) / temperature


def numerical_grad(fn, z, h=1e-6):
    """Central finite differences of a scalar ``fn`` at ``z`` (float64)."""
    z = f64(z).copy()
    g = np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        old = z[idx]
        z[idx] = old + h
        up = fn(z)
        z[idx] = old - h
        down = fn(z)
        z[idx] = old
        g[idx] = (up - down) / (2 * h)
    return g


def topk_ids(x, k):
    """Ids of the ``k`` largest entries of a 1-D array, in decreasing order (stable ties)."""
    return np.argsort(-f64(x), kind="stable")[:k]


def _rows(*arrays):
    """Iterate over the batch positions ``[...]`` of arrays shaped ``[..., X]``."""
    return np.ndindex(*np.shape(arrays[0])[:-1])


# --------------------------------------------------------------------------------------------
# divergences (objectives.md §0, §1)


def reverse_kl(z, zt, temperature=1.0, where=None):
    """``RKL = KL(p || q)``."""
    lp, lq = log_softmax(z, temperature, where), log_softmax(zt, temperature, where)
    return masked(kl(np.exp(lp), np.exp(lq)), where)


def forward_kl(z, zt, temperature=1.0, where=None):
    """``FKL = KL(q || p)``."""
    lp, lq = log_softmax(z, temperature, where), log_softmax(zt, temperature, where)
    return masked(kl(np.exp(lq), np.exp(lp)), where)


def jsd_probs(p, q, beta):
    """Generalized JSD with TRL's ends: P = teacher ``q``, Q = student ``p``.

    ``beta = 0`` -> ``KL(q||p)``; ``beta = 1`` -> ``KL(p||q)``; otherwise
    ``beta KL(q||m) + (1-beta) KL(p||m)``, ``m = beta q + (1-beta) p`` (in probability space).
    """
    if beta == 0.0:
        return kl(q, p)
    if beta == 1.0:
        return kl(p, q)
    m = beta * f64(q) + (1.0 - beta) * f64(p)
    return beta * kl(q, m) + (1.0 - beta) * kl(p, m)


def generalized_jsd(z, zt, beta=0.5, temperature=1.0, where=None):
    p = np.exp(log_softmax(z, temperature, where))
    q = np.exp(log_softmax(zt, temperature, where))
    return masked(jsd_probs(p, q, beta), where)


def total_variation(z, zt, temperature=1.0, where=None):
    p = np.exp(log_softmax(z, temperature, where))
    q = np.exp(log_softmax(zt, temperature, where))
    return masked(0.5 * np.sum(np.abs(p - q), axis=-1), where)


def token_entropy(z, temperature=1.0, where=None):
    return masked(entropy_of(np.exp(log_softmax(z, temperature, where))), where)


def token_logp(z, tokens, temperature=1.0, where=None):
    lp = log_softmax(z, temperature, where)
    out = np.zeros(lp.shape[:-1])
    for idx in _rows(lp):
        out[idx] = lp[idx][int(np.asarray(tokens)[idx])]
    return masked(out, where)


def log_ratio(logp, teacher_logp, where=None):
    """``r_t = log q(y_t) - log p(y_t)``."""
    return masked(f64(teacher_logp) - f64(logp), where)


def sampled_kl(logp, ref_logp, estimator="k3", where=None):
    """Schulman's estimators, ``u = log ref(y) - log p(y)``:
    k1 = -u, k2 = u^2 / 2, k3 = e^u - 1 - u."""
    u = f64(ref_logp) - f64(logp)
    value = {"k1": -u, "k2": 0.5 * u * u, "k3": np.exp(u) - 1.0 - u}[estimator]
    return masked(value, where)


# analytic gradients w.r.t. the student logits


def grad_reverse_kl(z, zt, temperature=1.0):
    """§0: ``dRKL/dz_j = p_j (lS_j - lT_j - RKL)`` (times ``1/tau``)."""
    lp, lq = log_softmax(z, temperature), log_softmax(zt, temperature)
    p = np.exp(lp)
    rkl = np.sum(p * (lp - lq), axis=-1, keepdims=True)
    return p * (lp - lq - rkl) / temperature


def grad_forward_kl(z, zt, temperature=1.0):
    """§0: ``dFKL/dz = p - q`` (times ``1/tau``)."""
    p, q = np.exp(log_softmax(z, temperature)), np.exp(log_softmax(zt, temperature))
    return (p - q) / temperature


def jsd_dp(p, q, beta):
    """``dJSD/dp`` (p = student) as a function on the simplex, derived here.

    beta = 0: ``-q/p``; beta = 1: ``log p - log q + 1``; interior: ``(1-beta) log(p/m)``, since
    the terms through ``dm/dp = 1-beta`` cancel:
    ``-beta q (1-beta)/m + (1-beta)(log(p/m) + 1 - p (1-beta)/m) = (1-beta) log(p/m)``
    (``beta q + (1-beta) p = m``). Constant offsets do not matter after :func:`softmax_chain`.
    """
    p, q = f64(p), f64(q)
    if beta == 0.0:
        return -q / p
    if beta == 1.0:
        return np.log(p) - np.log(q) + 1.0
    m = beta * q + (1.0 - beta) * p
    return (1.0 - beta) * (np.log(p) - np.log(m))


def grad_generalized_jsd(z, zt, beta, temperature=1.0):
    p = np.exp(log_softmax(z, temperature))
    q = np.exp(log_softmax(zt, temperature))
    return softmax_chain(p, jsd_dp(p, q, beta), temperature)


def grad_token_entropy(z, temperature=1.0):
    """``dH/dz = -p (log p + H) / tau`` (derived: ``dH/dp = -(log p + 1)``)."""
    lp = log_softmax(z, temperature)
    p = np.exp(lp)
    return softmax_chain(p, -(lp + 1.0), temperature)


def grad_total_variation(z, zt, temperature=1.0):
    """``dTV/dp = 0.5 sign(p - q)`` (no ties in the test inputs)."""
    p = np.exp(log_softmax(z, temperature))
    q = np.exp(log_softmax(zt, temperature))
    return softmax_chain(p, 0.5 * np.sign(p - q), temperature)


def grad_token_logp(z, tokens, temperature=1.0):
    """``d log p_y / dz = (onehot(y) - p) / tau``."""
    p = np.exp(log_softmax(z, temperature))
    onehot = np.zeros_like(p)
    for idx in _rows(p):
        onehot[idx][int(np.asarray(tokens)[idx])] = 1.0
    return (onehot - p) / temperature


def pg_grad(z, token, advantage, temperature=1.0):
    """§0: sampled-token PG ``d(-sg(A) log p_y)/dz = -A (onehot(y) - p)``, one position."""
    p = np.exp(log_softmax(z, temperature))
    onehot = np.zeros_like(p)
    onehot[token] = 1.0
    return -advantage * (onehot - p) / temperature


# --------------------------------------------------------------------------------------------
# top-k family (objectives.md §3, §7, §8, §9, §11), one position at a time


class Sparse(NamedTuple):
    """A sparse teacher: its top-K ids and full-vocabulary log-probs, ``[..., K]`` each."""
    ids: np.ndarray
    logp: np.ndarray


def sparse_from_logits(zt, K, temperature=1.0):
    """The teacher's K most likely tokens (decreasing) and their log-probs."""
    lq = log_softmax(zt, temperature)
    ids = np.zeros(lq.shape[:-1] + (K,), np.int64)
    logp = np.zeros(lq.shape[:-1] + (K,))
    for idx in _rows(lq):
        ids[idx] = topk_ids(lq[idx], K)
        logp[idx] = lq[idx][ids[idx]]
    return Sparse(ids, logp)


def _teacher_row(teacher, idx, temperature):
    """One position of the teacher: ('dense', lq[V]) or ('sparse', ids[K], logp[K])."""
    if isinstance(teacher, Sparse):
        return ("sparse", np.asarray(teacher.ids[idx]), f64(teacher.logp[idx]))
    return ("dense", log_softmax(np.asarray(teacher)[idx], temperature))


def _teacher_logp_row(ids, trow, fill):
    """Teacher log-probs at ``ids`` and 'known' flags; unknown sparse ids take ``fill``."""
    if trow[0] == "dense":
        return trow[1][ids], np.ones(len(ids), bool)
    table = dict(zip(trow[1].tolist(), trow[2].tolist()))
    known = np.array([int(i) in table for i in ids])
    vals = np.array([table.get(int(i), np.nan) for i in ids])
    return np.where(known, vals, fill), known


def _teacher_topk_row(trow, k):
    """The teacher's top-k ids and their log-probs (dense: argsort; sparse: its first k)."""
    if trow[0] == "dense":
        ids = topk_ids(trow[1], k)
        return ids, trow[1][ids]
    return trow[1][:k], trow[2][:k]


def teacher_topk(zt, k, temperature=1.0):
    return sparse_from_logits(zt, k, temperature)


def teacher_logp_at(ids, teacher, temperature=1.0, fill=None):
    """Teacher log-probs at ``ids [..., k]``; unknown sparse ids get ``fill`` (default -inf)."""
    ids = np.asarray(ids)
    out, known = np.zeros(ids.shape), np.zeros(ids.shape, bool)
    for idx in _rows(ids):
        f = -np.inf if fill is None else f64(fill)[idx]
        trow = _teacher_row(teacher, idx, temperature)
        out[idx], known[idx] = _teacher_logp_row(ids[idx], trow, f)
    return out, known


def _support_row(zrow, trow, k, temperature):
    """Student full-vocab log-probs, its top-k ids S, teacher log-probs at S (filled), known."""
    lp = log_softmax(zrow, temperature)
    S = topk_ids(lp, k)
    lq_S, known = _teacher_logp_row(S, trow, fill=lp[S])  # fill rule: the student's own log-prob
    return lp, S, lq_S, known


def _per_position(row_fn, z, teacher, k, temperature, where, with_grad):
    """Apply ``row_fn(zrow, trow) -> (value, grad[V])`` at every position; masked -> 0."""
    z = f64(z)
    values, grads = np.zeros(z.shape[:-1]), np.zeros(z.shape)
    for idx in _rows(z):
        if where is not None and not np.asarray(where)[idx]:
            continue
        values[idx], grads[idx] = row_fn(z[idx], _teacher_row(teacher, idx, temperature))
    return (values, grads) if with_grad else values


def _indicator(ids, V):
    e = np.zeros(V)
    e[np.asarray(ids, int)] = 1.0
    return e


def student_topk_reverse_kl(z, teacher, k, temperature=1.0, where=None, grad=False, sg=False):
    """§8 ``K = sum_{S_k} p (lS - lT)``; gradients (teacher values are constants):

    no sg (derived): ``1[S] p r - p <p, r>_S + 1[S] p - p P_S`` (the last two = grad of the
    top-k mass ``P_S``); sg (§8): ``1[S] p r - p <p, r>_S``, ``r = lS - lT``.
    """
    def row(zrow, trow):
        lp, S, lq_S, _ = _support_row(zrow, trow, k, temperature)
        p = np.exp(lp)
        r = np.zeros_like(lp)
        r[S] = lp[S] - lq_S
        inS = _indicator(S, len(lp))
        value = np.sum(p[S] * r[S])
        g = inS * p * r - p * value
        if not sg:
            g = g + inS * p - p * np.sum(p[S])
        return value, g / temperature
    return _per_position(row, z, teacher, k, temperature, where, grad)


def student_topk_reverse_kl_sg(z, teacher, k, temperature=1.0, where=None, grad=False):
    return student_topk_reverse_kl(z, teacher, k, temperature, where, grad, sg=True)


def student_topk_reverse_kl_tail(z, teacher, k, temperature=1.0, eps=1e-8, where=None,
                                 grad=False):
    """§8 ``K + pbar log(pbar/qbar)``, ``pbar = 1 - sum_S p``, ``qbar = 1 - sum_S q`` (>= eps).

    Gradient (derived): ``dK/dz + (log(pbar/qbar) + 1) dpbar/dz`` with
    ``dpbar/dz = -(1[S] p - p P_S)`` (0 where the clamp is active).
    """
    def row(zrow, trow):
        lp, S, lq_S, _ = _support_row(zrow, trow, k, temperature)
        p = np.exp(lp)
        head = np.sum(p[S] * (lp[S] - lq_S))
        pbar_raw = 1.0 - np.sum(p[S])
        pbar, qbar = max(pbar_raw, eps), max(1.0 - np.sum(np.exp(lq_S)), eps)
        value = head + pbar * (math.log(pbar) - math.log(qbar))
        r = np.zeros_like(lp)
        r[S] = lp[S] - lq_S
        inS = _indicator(S, len(lp))
        dmass = inS * p - p * np.sum(p[S])
        g_head = inS * p * r - p * head + dmass
        dpbar = -dmass if pbar_raw > eps else 0.0 * dmass
        g = g_head + (math.log(pbar) - math.log(qbar) + 1.0) * dpbar
        return value, g / temperature
    return _per_position(row, z, teacher, k, temperature, where, grad)


def _renorm(logx):
    logx = f64(logx)
    mx = np.max(logx)
    return logx - mx - math.log(np.sum(np.exp(logx - mx)))


def _renorm_rkl_row(lp_full, ids, lq_ids, temperature):
    """RKL between ``p`` and ``q`` both renormalised on ``ids``; gradient ``p~ (r~ - R)`` there.

    Derived: the same gradient with or without ``sg`` on ``log p~`` (the extra term is the
    gradient of ``sum p~ = 1``).
    """
    V = len(lp_full)
    g = np.zeros(V)
    if len(ids) == 0:
        return 0.0, g
    lpn, lqn = _renorm(lp_full[ids]), _renorm(lq_ids)
    pn = np.exp(lpn)
    value = np.sum(pn * (lpn - lqn))
    g[ids] = pn * (lpn - lqn - value)
    return value, g / temperature


def student_topk_renormalized_reverse_kl(z, teacher, k, temperature=1.0, where=None, grad=False):
    """vOPD / §11: ``sum_{S_k} p~ (log p~ - log q~)``, both renormalised on S_k.

    Sparse teacher: a student token it did not send takes ``q~ = p~``; the tokens it sent share
    the remaining mass ``1 - sum_missing p~`` in proportion to q (the docstring's rule). ``q~``
    carries no gradient, so the gradient is ``p~ (log p~ - log q~ - value)`` on S_k.
    """
    def row(zrow, trow):
        lp, S, lq_S, known = _support_row(zrow, trow, k, temperature)
        lpn = _renorm(lp[S])
        pn = np.exp(lpn)
        lqn = lpn.copy()
        if known.any():
            lqn[known] = _renorm(lq_S[known]) + np.log(1.0 - pn[~known].sum())
        value = float(np.sum(pn * (lpn - lqn)))
        g = np.zeros(len(lp))
        g[S] = pn * (lpn - lqn - value)
        return value, g / temperature
    return _per_position(row, z, teacher, k, temperature, where, grad)


def intersect_topk_reverse_kl(z, teacher, k, temperature=1.0, where=None, grad=False):
    """§8 ``topk_reverse_kl_intersect_sg_norm``: the RKL renormalised on ``I = S_k ∩ T_k``,
    0 if ``I`` is empty."""
    def row(zrow, trow):
        lp, S, lq_S, known = _support_row(zrow, trow, k, temperature)
        T, _ = _teacher_topk_row(trow, k)
        inside = np.array([int(v) in set(T.tolist()) for v in S]) & known
        return _renorm_rkl_row(lp, S[inside], lq_S[inside], temperature)
    return _per_position(row, z, teacher, k, temperature, where, grad)


def topk_opd_loss(z, teacher, k, support="student", temperature=1.0, where=None, grad=False):
    """§9 Rethinking-OPD: ``-sum_v A(v)`` with ``A(v) = w(v)(lT(v) - lS(v))`` (ratio value 1).

    Supports: student = S_k, w = p renormalised on S_k (tokens a sparse teacher lacks have A = 0
    by the fill rule); overlap = S_k ∩ T_k, w renormalised there; non_overlap = symmetric
    difference, w = raw p. Gradient: ``-sum_v A(v) (onehot(v) - p) / tau``.
    """
    def row(zrow, trow):
        lp, S, lq_S, known = _support_row(zrow, trow, k, temperature)
        p = np.exp(lp)
        T, lq_T = _teacher_topk_row(trow, k)
        Tset, Sset = set(T.tolist()), set(S.tolist())
        if support == "student":
            ids, lq, w = S, lq_S, p[S] / np.sum(p[S])
        elif support == "overlap":
            keep = np.array([int(v) in Tset for v in S]) & known
            ids, lq = S[keep], lq_S[keep]
            w = p[ids] / np.sum(p[ids]) if keep.any() else np.zeros(0)
        elif support == "non_overlap":
            keep_s = np.array([int(v) not in Tset for v in S]) & known
            keep_t = np.array([int(v) not in Sset for v in T])
            ids = np.concatenate([S[keep_s], T[keep_t]]).astype(int)
            lq = np.concatenate([lq_S[keep_s], lq_T[keep_t]])
            w = p[ids]
        else:
            raise ValueError(support)
        A = w * (lq - lp[ids])
        value = -np.sum(A)
        g = np.zeros_like(lp)
        for a, v in zip(A, ids):
            e = np.zeros_like(lp)
            e[v] = 1.0
            g += -a * (e - p)
        return value, g / temperature
    return _per_position(row, z, teacher, k, temperature, where, grad)


def teacher_topk_forward_kl(z, teacher, k, temperature=1.0, where=None, grad=False):
    """§3 EOPD: ``sum_{K} q~ (log q~ - lS)``, q~ = teacher renormalised on its top-k, lS full-vocab.

    Gradient (derived): ``(p - 1[K] q~) / tau``.
    """
    def row(zrow, trow):
        lp = log_softmax(zrow, temperature)
        K, lq_K = _teacher_topk_row(trow, k)
        lqn = _renorm(lq_K)
        qn = np.exp(lqn)
        value = np.sum(qn * (lqn - lp[K]))
        g = np.exp(lp).copy()
        g[K] -= qn
        return value, g / temperature
    return _per_position(row, z, teacher, k, temperature, where, grad)


def teacher_topk_generalized_jsd(z, teacher, k, beta=0.5, temperature=1.0, where=None, grad=False):
    """§7 OPSD ``top_k_loss``: both renormalised on the teacher's top-k, then JSD_beta."""
    def row(zrow, trow):
        lp = log_softmax(zrow, temperature)
        K, lq_K = _teacher_topk_row(trow, k)
        pn, qn = np.exp(_renorm(lp[K])), np.exp(_renorm(lq_K))
        value = float(jsd_probs(pn[None], qn[None], beta)[0])
        g = np.zeros_like(lp)
        g[K] = softmax_chain(pn, jsd_dp(pn, qn, beta), temperature)
        return value, g
    return _per_position(row, z, teacher, k, temperature, where, grad)


# --------------------------------------------------------------------------------------------
# diagnostics (§9)


def _overlap_row(zrow, trow, k, temperature):
    lp, S, lq_S, known = _support_row(zrow, trow, k, temperature)
    T, _ = _teacher_topk_row(trow, k)
    inside = np.array([int(v) in set(T.tolist()) for v in S]) & known
    return lp, S, lq_S, inside


def _diag(fn, z, teacher, k, temperature):
    z = f64(z)
    out = np.zeros(z.shape[:-1])
    for idx in _rows(z):
        out[idx] = fn(*_overlap_row(z[idx], _teacher_row(teacher, idx, temperature), k,
                                    temperature))
    return out


def overlap_ratio(z, teacher, k, temperature=1.0):
    """``|S_k ∩ T_k| / k``."""
    return _diag(lambda lp, S, lq, inside: inside.sum() / k, z, teacher, k, temperature)


def overlap_count(z, teacher, k, temperature=1.0):
    return _diag(lambda lp, S, lq, inside: float(inside.sum()), z, teacher, k, temperature)


def overlap_mass_student(z, teacher, k, temperature=1.0):
    return _diag(lambda lp, S, lq, inside: np.exp(lp[S][inside]).sum(), z, teacher, k, temperature)


def overlap_mass_teacher(z, teacher, k, temperature=1.0):
    return _diag(lambda lp, S, lq, inside: np.exp(lq[inside]).sum(), z, teacher, k, temperature)


def overlap_advantage_sum(z, teacher, k, temperature=1.0):
    """``sum_{v in S∩T} w(v) (lT(v) - lS(v))``, ``w`` = student probs renormalised on ``S_k``."""
    def fn(lp, S, lq, inside):
        w = np.exp(lp[S]) / np.exp(lp[S]).sum()
        return np.sum((w * (lq - lp[S]))[inside])
    return _diag(fn, z, teacher, k, temperature)


def top1_agreement(z, zt):
    return (np.argmax(f64(z), -1) == np.argmax(f64(zt), -1)).astype(np.float64)


# --------------------------------------------------------------------------------------------
# advantages (§2, §4, §5, §11)


def opd_advantage(teacher_logp, logp, coef=1.0, where=None):
    return masked(coef * (f64(teacher_logp) - f64(logp)), where)


def discounted_future_sum(values, mask, gamma):
    """§2: ``A_t = sum_{j>=0} gamma^j m_{t+j} x_{t+j}`` along the last axis; 0 where ``m_t = 0``."""
    x, m = f64(values), np.asarray(mask, bool)
    out = np.zeros_like(x)
    T = x.shape[-1]
    for idx in np.ndindex(*x.shape[:-1]):
        for t in range(T):
            if m[idx][t]:
                out[idx][t] = sum(gamma ** j * x[idx][t + j] for j in range(T - t) if m[idx][t + j])
    return out


def vopd_advantage(teacher_logp, logp, baseline_kl, where=None):
    """§11: ``A = r + KL``."""
    return masked(f64(teacher_logp) - f64(logp) + f64(baseline_kl), where)


def mixture_clip_floor(lam, reading="log_odds"):
    """§5: reading A ``log(lam/(1-lam))``, reading B ``log(lam)/(1-lam)``."""
    return math.log(lam / (1 - lam)) if reading == "log_odds" else math.log(lam) / (1 - lam)


def clip_below(a, floor, where=None):
    return masked(np.maximum(f64(a), floor), where)


def clip(a, low=None, high=None, where=None):
    x = f64(a)
    if low is not None:
        x = np.maximum(x, low)
    if high is not None:
        x = np.minimum(x, high)
    return masked(x, where)


def positive_part(a):
    return (f64(a) > 0).astype(np.float64)


def scale_by_sign(a, pos=1.0, neg=1.0):
    a = f64(a)
    return np.where(a > 0, pos * a, neg * a)


# --------------------------------------------------------------------------------------------
# surrogates (§0, §2, §4); gradients w.r.t. ``logp``


def importance_ratio(logp, behavior_logp):
    return np.exp(f64(logp) - f64(behavior_logp))


def importance_sampling_loss(logp, behavior_logp, advantage, max_ratio=None, where=None):
    """``-A min(rho, max_ratio)``; d/dlogp = ``-A rho`` where the truncation is inactive, else 0."""
    rho = importance_ratio(logp, behavior_logp)
    active = np.ones_like(rho, bool) if max_ratio is None else rho < max_ratio
    r = rho if max_ratio is None else np.minimum(rho, max_ratio)
    A = f64(advantage)
    return masked(-A * r, where), masked(np.where(active, -A * rho, 0.0), where)


def ppo_clip_loss(logp, behavior_logp, advantage, eps=0.2, eps_high=None, where=None):
    """``max(-rho A, -clip(rho, 1-eps, 1+eps_high) A)``; its logp-gradient is ``-A rho`` except
    where the clipped branch is selected and the clip is active (A > 0, rho > 1+eps_high or
    A < 0, rho < 1-eps), where it is 0."""
    eps_high = eps if eps_high is None else eps_high
    rho = importance_ratio(logp, behavior_logp)
    A = f64(advantage)
    value = np.maximum(-rho * A, -np.clip(rho, 1 - eps, 1 + eps_high) * A)
    flat = ((A > 0) & (rho > 1 + eps_high)) | ((A < 0) & (rho < 1 - eps))
    return masked(value, where), masked(np.where(flat, 0.0, -A * rho), where)


def sign_split_loss(pg_loss, local_divergence, advantage, alpha=1.0, where=None):
    """§4: ``1[A>0] l_PG + (1 - 1[A>0]) alpha D_loc``."""
    pos = f64(advantage) > 0
    return masked(np.where(pos, f64(pg_loss), alpha * f64(local_divergence)), where)


# --------------------------------------------------------------------------------------------
# selection (§3, §5, §10)


def entropy_gate(h, min_nats, soft_width=None):
    h = f64(h)
    if soft_width is None:
        return (h > min_nats).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-(h - min_nats) / soft_width))


def masked_quantile(values, mask, q):
    """Linear-interpolation quantile of the valid values (``np.quantile``); +inf if none."""
    v = f64(values)[np.asarray(mask, bool)]
    return float(np.quantile(v, q)) if v.size else np.inf


def quantile_select(values, mask, top_frac):
    """§5 Eq. 8: ``1[x >= quantile_{1-beta}(valid x)]`` on valid tokens."""
    tau = masked_quantile(values, mask, 1.0 - top_frac)
    return (np.asarray(mask, bool) & (f64(values) >= tau)).astype(np.float64)


def two_stage(step, switch_step, first, second):
    return f64(first) if step < switch_step else f64(second)


def reopold_select(reward, entropy, mask, floor, top_frac, step, switch_step):
    """§5: stage 1 ``1[R >= F]``, stage 2 the entropy quantile mask."""
    stage1 = (np.asarray(mask, bool) & (f64(reward) >= floor)).astype(np.float64)
    return two_stage(step, switch_step, stage1, quantile_select(entropy, mask, top_frac))


def minmax_normalize(values, mask):
    """§10: ``(x - min) / (max - min)`` over valid tokens; 0 if ``max == min``; 0 off-mask."""
    x, m = f64(values), np.asarray(mask, bool)
    lo, hi = x[m].min(), x[m].max()
    out = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return np.where(m, out, 0.0)


def soft_or(a, b):
    """§10: ``1 - (1 - a)(1 - b)``."""
    return 1.0 - (1.0 - f64(a)) * (1.0 - f64(b))


def n_keep(frac, n):
    """``max(floor(frac * n), 1)`` (0 if n = 0), reading products within 1e-9 of an integer as
    that integer (TIP's utility samples floor(rho N) positions; at least one is kept)."""
    if n == 0:
        return 0
    x = frac * n
    return max(int(round(x)) if abs(x - round(x)) < 1e-9 else math.floor(x), 1)


def top_fraction_select(score, mask, frac):
    """§10: keep the ``n_keep(frac, n)`` valid tokens of highest score; ties by flat position."""
    s, m = f64(score).reshape(-1), np.asarray(mask, bool).reshape(-1)
    valid = [i for i in range(s.size) if m[i]]
    order = sorted(valid, key=lambda i: (-s[i], i))
    out = np.zeros(s.size)
    out[order[:n_keep(frac, len(valid))]] = 1.0
    return out.reshape(np.shape(score))


def tip_sampling_weights(h, d, alpha=1.0, gamma=0.0):
    """§10 sampling utility: ``h^alpha d^gamma``."""
    return f64(h) ** alpha * f64(d) ** gamma


def quadrant_select(h, d, mask, high_entropy, high_divergence, threshold=0.5):
    keep = ((f64(h) > threshold) == high_entropy) & ((f64(d) > threshold) == high_divergence)
    return (keep & np.asarray(mask, bool)).astype(np.float64)


def inclusion_probabilities(w, n_pick):
    """Exact inclusion probability of each item when ``n_pick`` items are drawn one by one
    without replacement with probability proportional to ``w`` (successive sampling)."""
    w = f64(w)
    incl = np.zeros(len(w))

    def rec(chosen, prob):
        if len(chosen) == n_pick:
            for i in chosen:
                incl[i] += prob
            return
        rest = [i for i in range(len(w)) if i not in chosen]
        tot = sum(w[i] for i in rest)
        for i in rest:
            if w[i] > 0:
                rec(chosen + [i], prob * w[i] / tot)

    rec([], 1.0)
    return incl


# --------------------------------------------------------------------------------------------
# self-distillation (§6)


def clip_divergence(values, max_value):
    return np.minimum(f64(values), max_value)


def quantile_clip_divergence(values, mask, q=0.99):
    return np.minimum(f64(values), masked_quantile(values, mask, q))


def _disagree(a, mode):
    a = f64(a)
    if mode == "var":
        return np.var(a, axis=-1)  # population variance
    return a.max(-1) - a.min(-1)


def token_agreement_weights(aux, mask, gamma=1.0, q=0.95, mode="var"):
    """§6.2: ``d = Var_k a``, ``s = max(quantile_q(d), 1e-6)``,
    ``w = max(1 / (1 + gamma min(d/s, 10)), 0.01)``; 0 off-mask."""
    d = _disagree(aux, mode)
    s = max(masked_quantile(d, mask, q), 1e-6)
    w = np.maximum(1.0 / (1.0 + gamma * np.minimum(d / s, 10.0)), 0.01)
    return np.where(np.asarray(mask, bool), w, 0.0)


def sequence_agreement_weights(aux, mask, gamma=1.0, mode="var"):
    """§6.2 sequence variant: ``S^(k) = mean_t a^(k)_t`` (valid t), ``w = max(exp(-g d), 1e-6)``."""
    a, m = f64(aux), np.asarray(mask, bool)
    B = a.shape[0]
    out = np.zeros(m.shape)
    for b in range(B):
        if not m[b].any():
            continue
        per_teacher = a[b][m[b]].mean(axis=0)  # [K]
        w = max(math.exp(-gamma * float(_disagree(per_teacher, mode))), 1e-6)
        out[b] = np.where(m[b], w, 0.0)
    return out


def contrastive_hinge(logp, good, bad, margin=0.5, where=None):
    """§6.4 ``relu(margin + |l - l+| - |l - l-|)``; d/dl = ``sign(l - l+) - sign(l - l-)`` where
    active."""
    lv, g, b = f64(logp), f64(good), f64(bad)
    inner = margin + np.abs(lv - g) - np.abs(lv - b)
    grad = np.where(inner > 0, np.sign(lv - g) - np.sign(lv - b), 0.0)
    return masked(np.maximum(inner, 0.0), where), masked(grad, where)


def hidden_state_matching(h, ht, where=None):
    """§6.5 ``mean_d (h - hT)^2``; d/dh = ``2 (h - hT) / D``."""
    diff = f64(h) - f64(ht)
    value = np.mean(diff ** 2, axis=-1)
    grad = 2.0 * diff / diff.shape[-1]
    if where is not None:
        grad = np.where(np.asarray(where, bool)[..., None], grad, 0.0)
    return masked(value, where), grad


# --------------------------------------------------------------------------------------------
# reductions: (numerator, denominator) pairs


def token_mean(x, m):
    x, m = f64(x), f64(m)
    return np.sum(x * m), np.sum(m)


def weighted_mean(x, w):
    return token_mean(x, w)


def seq_mean_token_mean(x, m):
    x, m = f64(x), f64(m)
    num, den = 0.0, 0.0
    for b in range(x.shape[0]):
        if m[b].sum() > 0:
            num += np.sum(x[b] * m[b]) / m[b].sum()
            den += 1
    return num, den


def seq_mean_weighted_mean(x, w):
    return seq_mean_token_mean(x, w)


def seq_mean_token_sum(x, m):
    x, m = f64(x), f64(m)
    return np.sum(x * m), float(np.sum(m.sum(-1) > 0))


def reduced_value(num, den):
    return num / den if den > 0 else 0.0
