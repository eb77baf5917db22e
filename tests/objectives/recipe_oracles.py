"""Float64 NumPy oracles of the named recipes, written from the formulas of objectives.md and
objectives_2026.md (and the recipes' documented choices), not from the library.

Each oracle is ``loss(z, z0) -> float``: the recipe's loss as a function of the student logits
``z [B, T, V]``, with every stop-gradient quantity (advantages, selections, weights, the ``log p``
inside sg-top-k sums) evaluated at ``z0``. Its value at ``z = z0`` is the recipe's loss, and its
finite-difference gradient in ``z`` at ``z0`` is the recipe's gradient. The batch ``b`` holds
float64 NumPy copies of the test batch (tokens, mask, teacher logits, extras).
"""

import math

import numpy as np

from tests.objectives import reference as R


def lsm(z, t=1.0):
    x = np.asarray(z, np.float64) / t
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def token_lp(z, tokens, t=1.0):
    return np.take_along_axis(lsm(z, t), tokens[..., None], -1)[..., 0]


def kl(la, lb):
    """KL(a || b) per position from log-probs (no zeros in the test inputs)."""
    return np.sum(np.exp(la) * (la - lb), -1)


def jsd(lp, lq, beta):
    if beta == 0.0:
        return kl(lq, lp)
    if beta == 1.0:
        return kl(lp, lq)
    lm = np.log(beta * np.exp(lq) + (1 - beta) * np.exp(lp))
    return beta * kl(lq, lm) + (1 - beta) * kl(lp, lm)


def entropy(z, t=1.0):
    lp = lsm(z, t)
    return -np.sum(np.exp(lp) * lp, -1)


def tmean(x, m):
    return float(np.sum(np.where(m, x, 0.0)) / np.sum(m))


def wmean(x, w):
    return float(np.sum(w * x) / np.sum(w))


def is_loss(adv, lp, beh):
    return -adv * np.exp(lp - beh)


def ppo_loss(adv, lp, beh, eps):
    rho = np.exp(lp - beh)
    return np.maximum(-rho * adv, -np.clip(rho, 1 - eps, 1 + eps) * adv)


def surrogate(kind, adv, lp, beh, eps=0.2):
    return is_loss(adv, lp, beh) if kind == "is" else ppo_loss(adv, lp, beh, eps)


def quantile(x, m, q):
    return float(np.quantile(np.asarray(x, np.float64)[np.asarray(m, bool)], q))


def minmax(x, m):
    lo, hi = x[m].min(), x[m].max()
    return np.where(m, (x - lo) / (hi - lo), 0.0)


def n_keep(frac, n):
    """TIP / TA-OPD's budget: max(floor(frac n), 1) (within 1e-9 of an integer = it)."""
    x = frac * n
    k = round(x) if abs(x - round(x)) < 1e-9 else math.floor(x)
    return max(int(k), 1)


def top_mask(score, m, frac):
    """The n_keep highest scores among the valid tokens (ties by flat position)."""
    s, mm = score.reshape(-1), m.reshape(-1)
    order = sorted(np.flatnonzero(mm), key=lambda i: (-s[i], i))
    keep = np.zeros(s.size, bool)
    keep[order[:n_keep(frac, mm.sum())]] = True
    return keep.reshape(m.shape)


def per_position(fn, *arrays):
    """``fn(*rows) -> float`` at every position of ``[B, T, ...]`` arrays."""
    out = np.zeros(arrays[0].shape[:2])
    for i in np.ndindex(*out.shape):
        out[i] = fn(*(a[i] for a in arrays))
    return out


def student_topk(lp_row, k):
    return np.argsort(-lp_row, kind="stable")[:k]


# --------------------------------------------------------------------------------------------
# per-position top-k quantities with explicit stop-gradient points (z0 rows)


def sg_topk_rkl(z, z0, zt, k, t):
    """Many Faces sg top-k: sum_{S(z0)} p_z(v) (log p_z0(v) - log q(v))."""
    def row(a, a0, at):
        lp, lp0, lq = lsm(a, t), lsm(a0, t), lsm(at, t)
        S = student_topk(lp0, k)
        return np.sum(np.exp(lp[S]) * (lp0[S] - lq[S]))
    return per_position(row, z, z0, zt)


def topk_rkl(z, zt, k, t):
    """Plain top-k reverse KL sum_{S(z)} p (log p - log q) (no sg)."""
    return per_position(lambda a, at: float(R.student_topk_reverse_kl(a[None], at[None], k, t)[0]),
                        z, zt)


def intersect_rkl(z, z0, zt, k, t):
    """RKL on S ∩ T, both renormalised there, log p~ at z0."""
    def row(a, a0, at):
        lp, lp0, lq = lsm(a, t), lsm(a0, t), lsm(at, t)
        S, T = student_topk(lp0, k), student_topk(lq, k)
        inter = np.array([v for v in S if v in set(T.tolist())], int)
        if inter.size == 0:
            return 0.0
        ren = lambda x: x - np.log(np.exp(x).sum())  # noqa: E731
        pn, pn0, qn = ren(lp[inter]), ren(lp0[inter]), ren(lq[inter])
        return np.sum(np.exp(pn) * (pn0 - qn))
    return per_position(row, z, z0, zt)


def topk_pg(z, z0, zt, k, t, support="student", weights="student", beh_ids=None,
            beh_logp=None, eps=None):
    """Rethinking-OPD: sum over the support of surrogate(A(v), rho(v)),
    A(v) = w(v)(log q(v) - log p_old(v)); p_old = p_z0 or the recorded behaviour top-k."""
    out = np.zeros(z.shape[:2])
    for i in np.ndindex(*out.shape):
        lp, lp0, lq = lsm(z[i], t), lsm(z0[i], t), lsm(zt[i], t)
        S = student_topk(lp0, k) if beh_ids is None else np.asarray(beh_ids[i], int)
        old = dict(zip(S.tolist(), (lp0[S] if beh_logp is None else beh_logp[i]).tolist()))
        T = student_topk(lq, k)
        Sset, Tset = set(S.tolist()), set(T.tolist())
        ids = {"student": list(S), "overlap": [v for v in S if v in Tset],
               "teacher": list(T), "union": list(S) + [v for v in T if v not in Sset],
               "non_overlap": [v for v in S if v not in Tset] + [v for v in T if v not in Sset],
               }[support]
        if not ids:
            continue
        ids = np.array(ids, int)
        lold = np.array([old.get(int(v), lp0[v]) for v in ids])
        if weights == "uniform":
            w = np.full(len(ids), 1.0 / (k if support == "non_overlap" else len(ids)))
        else:
            w = np.exp(lold if weights == "student" else lq[ids])
            if support != "non_overlap":
                w = w / w.sum()
        adv = w * (lq[ids] - lold)
        rho = np.exp(lp[ids] - lold)
        loss = -rho * adv
        if eps is not None:
            loss = np.maximum(loss, -np.clip(rho, 1 - eps, 1 + eps) * adv)
        out[i] = loss.sum()
    return out


def teacher_mass_on_student_topk(z, zt, k, t):
    return per_position(lambda a, at: np.exp(lsm(at, t))[student_topk(lsm(a, t), k)].sum(), z, zt)
