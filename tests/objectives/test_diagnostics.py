"""The token diagnostics' batch metrics against float64 NumPy (objectives.md §9 definitions)."""

import jax.numpy as jnp
import numpy as np
import pytest

import opd_jax.objectives as O
from tests.objectives import recipe_oracles as RO
from tests.objectives.conftest import make_batch


def _numpy_metrics(z, zt, tokens, m, k, t):
    lp, lq = RO.lsm(z, t), RO.lsm(zt, t)
    ratio, mass_s, mass_t, adv_sum, count = (np.zeros(m.shape) for _ in range(5))
    for i in np.ndindex(*m.shape):
        S = RO.student_topk(lp[i], k)
        T = set(RO.student_topk(lq[i], k).tolist())
        inside = np.array([v in T for v in S])
        w = np.exp(lp[i][S]) / np.exp(lp[i][S]).sum()  # student probs renormalised on S_k
        ratio[i] = inside.mean()
        count[i] = inside.sum()
        mass_s[i] = np.exp(lp[i][S])[inside].sum()
        mass_t[i] = np.exp(lq[i][S])[inside].sum()
        adv_sum[i] = (w * (lq[i][S] - lp[i][S]))[inside].sum()
    hs, ht = RO.entropy(z, t), RO.entropy(zt, t)
    some = m & (count > 0)
    u = RO.token_lp(zt, tokens, t) - RO.token_lp(z, tokens, t)
    mean = lambda x, mm=m: x[mm].mean()  # noqa: E731
    return {
        "diag/overlap_ratio": mean(ratio),
        "diag/overlap_mass_student": mean(mass_s, some),
        "diag/overlap_mass_teacher": mean(mass_t, some),
        "diag/overlap_advantage": adv_sum[m].sum() / count[m].sum(),
        "diag/student_entropy": mean(hs), "diag/teacher_entropy": mean(ht),
        "diag/entropy_gap_abs": mean(np.abs(ht - hs)), "diag/entropy_gap_signed": mean(ht - hs),
        "diag/top1_agree": mean((z.argmax(-1) == zt.argmax(-1)).astype(float)),
        "diag/reverse_kl": mean(RO.kl(lp, lq)),
        "diag/topk_reverse_kl": mean(RO.per_position(lambda a, b: float(
            RO.R.student_topk_reverse_kl(a[None], b[None], k, t)[0]), z, zt)),
        "diag/topk_reverse_kl_tail": mean(RO.per_position(lambda a, b: float(
            RO.R.student_topk_reverse_kl_tail(a[None], b[None], k, t)[0]), z, zt)),
        "diag/sampled_kl_k1": mean(-u), "diag/sampled_kl_k3": mean(np.expm1(u) - u),
        "diag/tokens": float(m.sum()),
    }


@pytest.mark.parametrize("k,temperature", [(4, 1.0), (12, 0.7)])
def test_diagnostic_metrics_against_numpy(k, temperature):
    b = make_batch(seed=21, b=4, t=5, v=16)
    z, zt = b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"]
    obj = O.build_objective(O.GKDConfig(temperature=temperature), diagnostics_k=k)
    feats = O.compute_features(obj.features, tokens=b["tokens"], mask=b["mask"], logits=z,
                               teacher_logits=zt)
    _, _, got = obj.apply(O.TokenCtx(mask=b["mask"], features=feats, step=jnp.int32(0)), ())
    want = _numpy_metrics(np.asarray(z, np.float64), np.asarray(zt, np.float64),
                          np.asarray(b["tokens"]), np.asarray(b["mask"]), k, temperature)
    assert set(want) <= set(got)
    for name, value in want.items():
        np.testing.assert_allclose(float(got[name]), value, rtol=2e-5, atol=2e-6, err_msg=name)
    # the overlap is partial here: neither 0 nor k tokens everywhere (the metric can move)
    assert 0.0 < want["diag/overlap_ratio"] < 1.0
