"""Each named recipe against an independent float64 NumPy oracle of its formula
(``recipe_oracles.py``): the loss value, and its gradient in the student logits by central
differences of the oracle with every stop-gradient quantity frozen (at 60 entries covering
every valid position)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opd_jax.objectives as O
from tests.objectives import recipe_oracles as RO
from tests.objectives.conftest import make_batch

SHAPE = dict(b=4, t=5, d=8, v=12)  # 15 valid positions (lengths 3, 5, 2, 5)


def _setup(seed=0):
    b = make_batch(seed, **SHAPE)
    z = b["hidden"] @ b["head"]
    zt = b["t_hidden"] @ b["t_head"]
    np_b = {"zt": np.asarray(zt, np.float64), "tokens": np.asarray(b["tokens"]),
            "mask": np.asarray(b["mask"]),
            **{k: np.asarray(v, np.float64) for k, v in b["extras"].items()}}
    return b, z, zt, np_b


def recipe_loss(cfg, b, z, zt, step=3, extras=None):
    obj = O.build_objective(cfg)
    ex = b["extras"] if extras is None else extras
    feats = O.compute_features(obj.features, tokens=b["tokens"], mask=b["mask"], logits=z,
                               teacher_logits=zt, extras=ex)
    ctx = O.TokenCtx(mask=b["mask"], features=feats, extras=ex, step=jnp.int32(step),
                     key=b["key"])
    terms, _, metrics = obj.apply(ctx, obj.init())
    return O.total(terms), metrics


def fd_entries(mask, v, n=60, seed=0):
    """``n`` logit entries (row, position, vocab) at valid positions, every valid position at
    least once: where the finite-difference gradient is taken (all 180 would cost 3x more)."""
    pos = list(zip(*np.nonzero(mask)))
    rng = np.random.default_rng(seed)
    picks = [(*p, int(rng.integers(v))) for p in pos]
    picks += [(*pos[i], int(rng.integers(v))) for i in rng.integers(len(pos), size=n - len(pos))]
    return sorted(set(picks))


def fd_grad(fn, z0, entries, h=1e-5):
    """Central differences of ``fn(z)`` at ``z0`` at the given entries."""
    z = np.asarray(z0, np.float64).copy()
    out = []
    for e in entries:
        old = z[e]
        z[e] = old + h
        up = fn(z)
        z[e] = old - h
        down = fn(z)
        z[e] = old
        out.append((up - down) / (2 * h))
    return np.array(out)


def check(cfg, oracle, seed=0, step=3, extras=None, grad_atol=2e-6):
    """``oracle(z, z0, nb) -> float`` against the recipe's value and gradient."""
    b, z, zt, nb = _setup(seed)
    if extras is not None:
        nb.update({k: np.asarray(v, np.float64) for k, v in extras.items()})
    nb["step"] = step
    got, got_g = jax.value_and_grad(lambda a: recipe_loss(cfg, b, a, zt, step, extras)[0])(z)
    z0 = np.asarray(z, np.float64)
    want = oracle(z0, z0, nb)
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-6)
    entries = fd_entries(nb["mask"], z0.shape[-1], seed=seed)
    want_g = fd_grad(lambda a: oracle(a, z0, nb), z0, entries)
    got_g = np.asarray(got_g, np.float64)
    np.testing.assert_allclose([got_g[e] for e in entries], want_g, rtol=1e-3, atol=grad_atol)
    assert np.all(got_g[~nb["mask"]] == 0.0)  # padded positions: exactly no gradient


def lps(z, z0, nb, t=1.0):
    """Student log-prob of the sampled tokens at z and z0, teacher's, behaviour's."""
    tok = nb["tokens"]
    return (RO.token_lp(z, tok, t), RO.token_lp(z0, tok, t), RO.token_lp(nb["zt"], tok, t),
            nb["behavior_logp"])


# ------------------------------------------------------------------ sampled-token recipes


@pytest.mark.parametrize("surrogate", ["is", "ppo"])
def test_opd(surrogate):
    def oracle(z, z0, nb):
        lp, _, lq, beh = lps(z, z0, nb)
        return RO.tmean(RO.surrogate(surrogate, lq - beh, lp, beh), nb["mask"])
    check(O.OPDConfig(surrogate=surrogate), oracle)


def test_opd_discounted_ppo():
    def oracle(z, z0, nb):
        lp, _, lq, beh = lps(z, z0, nb)
        adv = RO.R.discounted_future_sum(2.0 * (lq - beh), nb["mask"], 0.5)
        return RO.tmean(RO.ppo_loss(adv, lp, beh, 0.2), nb["mask"])
    check(O.OPDConfig(discount=0.5, kl_coef=2.0, surrogate="ppo"), oracle)


def test_opd_tinker_sum_per_sequence():
    """Tinker's normalisation: each sequence's token losses summed, then the mean over sequences."""
    def oracle(z, z0, nb):
        lp, _, lq, beh = lps(z, z0, nb)
        m = nb["mask"]
        per_seq = np.sum(np.where(m, RO.is_loss(lq - beh, lp, beh), 0.0), -1)
        return float(per_seq[m.any(-1)].mean())
    check(O.OPDConfig(reduction="sum_per_sequence"), oracle)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_gkd(beta):
    check(O.GKDConfig(beta=beta, temperature=0.9),
          lambda z, z0, nb: RO.tmean(RO.jsd(RO.lsm(z, 0.9), RO.lsm(nb["zt"], 0.9), beta),
                                     nb["mask"]))


@pytest.mark.parametrize("soft_width", [None, 0.3])
def test_eopd_hard_and_soft_gate(soft_width):
    def oracle(z, z0, nb):
        lp, _, lq, beh = lps(z, z0, nb)
        h = RO.entropy(nb["zt"])
        gate = (h > 2.0) if soft_width is None else 1 / (1 + np.exp(-(h - 2.0) / soft_width))
        fkl = RO.per_position(lambda a, at: float(RO.R.teacher_topk_forward_kl(
            a[None], at[None], 5)[0]), z, nb["zt"])
        return RO.tmean(RO.ppo_loss(lq - beh, lp, beh, 0.2) + 0.5 * gate * fkl, nb["mask"])
    check(O.EOPDConfig(tau=2.0, k=5, fkl_coef=0.5, soft_width=soft_width), oracle)


@pytest.mark.parametrize("local,surrogate", [("reverse_kl", "is"), ("forward_kl", "is"),
                                             ("topk_reverse_kl_sg", "ppo")])
def test_aopd(local, surrogate):
    def oracle(z, z0, nb):
        lp, lp0, lq, beh = lps(z, z0, nb)
        adv = lq - lp0  # the learner's log-prob, frozen
        pg = RO.surrogate(surrogate, adv, lp, beh)
        lz, lt = RO.lsm(z), RO.lsm(nb["zt"])
        loc = {"reverse_kl": lambda: RO.kl(lz, lt), "forward_kl": lambda: RO.kl(lt, lz),
               "topk_reverse_kl_sg": lambda: RO.sg_topk_rkl(z, z0, nb["zt"], 5, 1.0)}[local]()
        return RO.tmean(np.where(adv > 0, pg, 0.7 * loc), nb["mask"])
    check(O.AOPDConfig(alpha=0.7, local=local, k=5, surrogate=surrogate), oracle)


@pytest.mark.parametrize("baseline,clip,surrogate", [("full", None, "is"), ("topk", None, "ppo"),
                                                     ("full", 0.3, "is")])
def test_vopd(baseline, clip, surrogate):
    def oracle(z, z0, nb):
        lp, lp0, lq, beh = lps(z, z0, nb)
        r = lq - lp0
        if clip is not None:  # vOPD code: max(r, log(lambda) / (1 - lambda))
            r = np.maximum(r, np.log(clip) / (1 - clip))
        if baseline == "full":
            base = RO.kl(RO.lsm(z0), RO.lsm(nb["zt"]))
        else:
            base = RO.per_position(lambda a, at: float(RO.R.student_topk_renormalized_reverse_kl(
                a[None], at[None], 6)[0]), z0, nb["zt"])
        return RO.tmean(RO.surrogate(surrogate, r + base, lp, beh), nb["mask"])
    check(O.VOPDConfig(baseline=baseline, k=6, reward_clip=clip, surrogate=surrogate), oracle)


def test_sft_and_reinforce():
    check(O.SFTConfig(), lambda z, z0, nb: RO.tmean(-RO.token_lp(z, nb["tokens"]), nb["mask"]))

    def reinforce(z, z0, nb):
        lp, _, _, beh = lps(z, z0, nb)
        m, r = nb["mask"], nb["reward"]
        rows = m.any(-1)
        baseline = np.mean([r[i][m[i]].mean() for i in range(len(m)) if rows[i]])
        return RO.tmean(RO.is_loss(r - baseline, lp, beh), m)
    check(O.ReinforceConfig(), reinforce)


# ------------------------------------------------------------------ selection recipes


def _reopold_oracle(step, switch_step, entropy_select, surrogate):
    floor = np.log(0.2 / 0.8)

    def oracle(z, z0, nb):
        lp, lp0, lq, beh = lps(z, z0, nb)
        m = nb["mask"]
        reward = lq - lp0
        entropy_keep = m & (RO.entropy(z0) >= RO.quantile(RO.entropy(z0), m, 0.5))
        if switch_step is not None and step < switch_step:
            keep = m & (reward >= floor)
        else:
            keep = entropy_keep if entropy_select else m
        loss = RO.surrogate(surrogate, np.maximum(reward, floor), lp, beh)
        return RO.wmean(np.where(keep, loss, 0.0), keep.astype(float))
    return oracle


@pytest.mark.parametrize("step,switch_step,entropy_select,surrogate", [
    (3, None, True, "is"),  # the default path
    (1, 3, True, "is"), (5, 3, True, "ppo"),  # the two stages
    (5, 3, False, "is"),  # after the switch without entropy selection: every valid token
])
def test_reopold(step, switch_step, entropy_select, surrogate):
    check(O.REOPOLDConfig(switch_step=switch_step, entropy_select=entropy_select,
                          surrogate=surrogate),
          _reopold_oracle(step, switch_step, entropy_select, surrogate), step=step)


@pytest.mark.parametrize("select,normalize", [("soft_or", "minmax"), ("soft_or", "fixed"),
                                              ("q3", "fixed"), ("q3", "minmax"), ("all", "minmax")])
def test_tip_deterministic(select, normalize):
    def oracle(z, z0, nb):
        m = nb["mask"]
        h = RO.entropy(z0)
        d = RO.jsd(RO.lsm(z0), RO.lsm(nb["zt"]), 0.5)
        if normalize == "minmax":
            hn, dn = RO.minmax(h, m), RO.minmax(d, m)
        else:  # h / ln V and JSD / ln 2
            hn, dn = np.clip(h / np.log(z.shape[-1]), 0, 1), np.clip(d / np.log(2), 0, 1)
        if select == "soft_or":
            keep = RO.top_mask(1 - (1 - hn) * (1 - dn), m, 0.3)
        elif select == "q3":
            keep = m & (hn <= 0.4) & (dn > 0.4)
        else:
            keep = m
        rkl = RO.kl(RO.lsm(z), RO.lsm(nb["zt"]))
        return RO.wmean(np.where(keep, rkl, 0.0), keep.astype(float)) if keep.any() else 0.0
    check(O.TIPConfig(select=select, normalize=normalize, frac=0.3, q3_threshold=0.4), oracle)


def _selected_rows(cfg, keys):
    """For each key: the recipe's loss and which positions carry gradient (= were selected)."""
    b, z, zt, nb = _setup(0)

    def one(key):
        bb = dict(b, key=key)
        loss, g = jax.value_and_grad(lambda a: recipe_loss(cfg, bb, a, zt)[0])(z)
        return loss, jnp.any(g != 0, axis=-1)
    losses, sel = jax.jit(jax.vmap(one))(keys)
    return np.asarray(losses, np.float64), np.asarray(sel), z, nb


@pytest.mark.parametrize("select", ["random", "entropy_sampling"])
def test_tip_sampled(select):
    """floor(rho N) tokens, never a masked one, the loss is the mean reverse KL over them, and
    random selection includes every valid token equally often (N = 15, keep 4: p = 4/15)."""
    cfg = O.TIPConfig(select=select, frac=0.3, gamma=1.0)
    losses, sel, z, nb = _selected_rows(cfg, jax.random.split(jax.random.key(7), 300))
    m = nb["mask"]
    assert RO.n_keep(0.3, m.sum()) == 4
    assert np.all(sel.reshape(len(sel), -1).sum(-1) == 4) and not np.any(sel & ~m)
    rkl = RO.kl(RO.lsm(np.asarray(z, np.float64)), RO.lsm(nb["zt"]))
    np.testing.assert_allclose(losses, [rkl[s].mean() for s in sel], rtol=2e-5)
    if select == "random":  # binomial(300, 4/15): sd 0.026; 4.5 sd
        np.testing.assert_allclose(sel.mean(0)[m], 4 / 15, atol=0.12)


def test_tip_entropy_sampling_inclusion_probabilities():
    """Weights h^alpha d^gamma (gamma = 0: entropy only) on min-max normalised scores; inclusion
    frequencies over 2000
    keys against the exact successive-sampling probabilities (5 valid tokens, keep 2)."""
    b, z, zt, nb = _setup(0)
    m = np.zeros(nb["mask"].shape, bool)
    m[1, :5] = True
    cfg = O.TIPConfig(select="entropy_sampling", frac=0.5, alpha=1.0, gamma=0.0)

    def one(key):
        bb = dict(b, key=key, mask=jnp.asarray(m))
        g = jax.grad(lambda a: recipe_loss(cfg, bb, a, zt)[0])(z)
        return jnp.any(g != 0, axis=-1)
    sel = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(3), 2000)))
    z0 = np.asarray(z, np.float64)
    w = RO.minmax(RO.entropy(z0), m)[m]
    np.testing.assert_allclose(sel.mean(0)[m], RO.R.inclusion_probabilities(w, 2), atol=0.045)


@pytest.mark.parametrize("loss", ["pg", "reverse_kl"])
def test_ta_opd(loss):
    def oracle(z, z0, nb):
        lp, _, lq, beh = lps(z, z0, nb)
        m = nb["mask"]
        rkl0 = RO.kl(RO.lsm(z0), RO.lsm(nb["zt"]))
        mass = RO.teacher_mass_on_student_topk(z0, nb["zt"], 4, 1.0)
        keep = RO.top_mask(RO.minmax(rkl0, m) * RO.minmax(mass, m), m, 0.3)
        per = (RO.is_loss(lq - beh, lp, beh) if loss == "pg"
               else RO.kl(RO.lsm(z), RO.lsm(nb["zt"])))
        return RO.wmean(np.where(keep, per, 0.0), keep.astype(float))
    check(O.TAOPDConfig(k=4, frac=0.3, loss=loss), oracle)


def test_fire_opd():
    """Keep sequences whose mean teacher log-prob is >= the batch's 40% quantile; weights
    (1 + a(1 - H_T/max H_T))(1 + b H_S/max H_S) normalised to mean 1 over kept tokens."""
    def oracle(z, z0, nb):
        lp, _, lq, beh = lps(z, z0, nb)
        m = nb["mask"]
        seq = np.array([lq[i][m[i]].mean() for i in range(len(m))])
        keep = m & (seq >= np.quantile(seq, 0.4))[:, None]
        ht, hs = RO.entropy(nb["zt"]), RO.entropy(z0)
        w = (1 + 0.5 * (1 - ht / ht[keep].max())) * (1 + 2.0 * hs / hs[keep].max())
        w = np.where(keep, w / w[keep].mean(), 0.0)
        return RO.tmean(RO.ppo_loss(w * (lq - beh), lp, beh, 0.2), m)
    check(O.FiReOPDConfig(keep_quantile=0.4, teacher_coef=0.5, student_coef=2.0), oracle)


@pytest.mark.parametrize("mode,group_size", [("mean", 0), ("minmax", 2), ("mean", 2)])
def test_uni_opd_margin(mode, group_size):
    """Correct (reward > 0.5) samples' advantages shifted so that the gap is delta."""
    reward = jnp.broadcast_to(jnp.array([1.0, 0.0, 0.0, 1.0])[:, None], (4, 5))

    def oracle(z, z0, nb):
        lp, _, lq, beh = lps(z, z0, nb)
        m = nb["mask"]
        adv = np.where(m, lq - beh, 0.0)
        abar = np.array([adv[i][m[i]].mean() for i in range(4)])
        correct = np.array([True, False, False, True])
        g = group_size or 4
        for start in range(0, 4, g):
            rows = np.arange(start, start + g)
            cor, inc = rows[correct[rows]], rows[~correct[rows]]
            if len(cor) == 0 or len(inc) == 0:
                continue
            gap = (abar[cor].mean() - abar[inc].mean() if mode == "mean"
                   else abar[cor].min() - abar[inc].max())
            if gap < 0.5:
                adv[cor] += 0.5 - gap
        return RO.tmean(RO.is_loss(adv, lp, beh), m)
    b, *_ = _setup(0)
    check(O.UniOPDConfig(delta=0.5, mode=mode, group_size=group_size), oracle,
          extras={**b["extras"], "reward": reward})


@pytest.mark.parametrize("thresholds,step", [((None, None), 0), ((None, None), 37),
                                             ((1.5, 1.6), 100), ((1.5, 1.6), 50)])
def test_sead(thresholds, step):
    """Zones by (H(p) > t_S, H(q) > t_T) (median when None); default zone rules; alpha_k =
    (1 + cos(pi min(k, K)/K)) / 2 with K = 100."""
    ts, tt = thresholds

    def oracle(z, z0, nb):
        m = nb["mask"]
        hs, ht = RO.entropy(z0), RO.entropy(nb["zt"])
        s_hi = hs > (RO.quantile(hs, m, 0.5) if ts is None else ts)
        t_hi = ht > (RO.quantile(ht, m, 0.5) if tt is None else tt)
        alpha = 0.5 * (1 + np.cos(np.pi * min(step, 100) / 100))
        lz, lt = RO.lsm(z), RO.lsm(nb["zt"])
        fkl, rkl = RO.kl(lt, lz), RO.kl(lz, lt)
        loss = np.where(~s_hi & t_hi, fkl, 0.0) + np.where(
            s_hi & ~t_hi, alpha * fkl + (1 - alpha) * rkl, 0.0)
        return RO.tmean(loss, m)
    cfg = O.SEADConfig(anneal_steps=100, student_threshold=ts, teacher_threshold=tt)
    check(cfg, oracle, step=step)
    assert (O.build_objective(cfg).token_loss is not None) == (ts is not None)


def test_iw_opd():
    """TRL's weights: 1 + gamma (1 - sum_{s<t}|a_s| / max(eps, sum_s |a_s|)), a = log q - log mu."""
    def oracle(z, z0, nb):
        lp, _, lq, beh = lps(z, z0, nb)
        m = nb["mask"]
        a = np.where(m, lq - beh, 0.0)
        w = np.zeros_like(a)
        for i in range(len(a)):
            tot = max(np.abs(a[i]).sum(), 1e-8)
            for t in range(a.shape[1]):
                w[i, t] = 1 + 0.7 * (1 - np.abs(a[i, :t]).sum() / tot)
        return RO.tmean(RO.is_loss(w * a, lp, beh), m)
    check(O.IWOPDConfig(gamma=0.7), oracle)


@pytest.mark.parametrize("direction,clip_value", [("increasing", None), ("increasing", 0.3),
                                                  ("decreasing", 2.0)])
def test_pw_opsd(direction, clip_value):
    """Per sequence sum_t w_t min(KL(q_t || p_t), c) / sum_t w_t, mean over sequences, with
    w_t = 1 + gamma n_t / L (n_t: valid tokens up to t) or 1 + gamma (1 - n_t / L)."""
    def oracle(z, z0, nb):
        m = np.asarray(nb["mask"], bool)
        fkl = RO.kl(RO.lsm(nb["zt"], 1.3), RO.lsm(z, 1.3))
        if clip_value is not None:
            fkl = np.minimum(fkl, clip_value)
        per_seq = []
        for i in range(m.shape[0]):
            n, length = 0, m[i].sum()
            num = den = 0.0
            for t in range(m.shape[1]):
                if not m[i, t]:
                    continue
                n += 1
                u = n / length
                w = 1 + 0.8 * (u if direction == "increasing" else 1 - u)
                num, den = num + w * fkl[i, t], den + w
            if length:
                per_seq.append(num / den)
        return np.mean(per_seq)
    check(O.PWOPSDConfig(temperature=1.3, gamma=0.8, direction=direction, clip_value=clip_value),
          oracle)


def test_relative_position_weights_closed_form():
    mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
    w = np.asarray(O.relative_position_weights(mask, gamma=2.0))
    np.testing.assert_allclose(w[0], [1.5, 2.0, 2.5, 3.0, 0, 0])
    np.testing.assert_allclose(w[1], [2.0, 3.0, 0, 0, 0, 0])
    assert not w[2].any()
    d = np.asarray(O.relative_position_weights(mask, gamma=2.0, direction="decreasing"))
    np.testing.assert_allclose(d[0], [2.5, 2.0, 1.5, 1.0, 0, 0])


# ------------------------------------------------------------------ distribution recipes


@pytest.mark.parametrize("top_k", [None, 6])
def test_opsd_jsd(top_k):
    def oracle(z, z0, nb):
        if top_k is None:
            return RO.tmean(RO.jsd(RO.lsm(z, 1.1), RO.lsm(nb["zt"], 1.1), 0.5), nb["mask"])
        v = RO.per_position(lambda a, at: float(RO.R.teacher_topk_generalized_jsd(
            a[None], at[None], top_k, beta=0.5, temperature=1.1)[0]), z, nb["zt"])
        return RO.tmean(v, nb["mask"])
    check(O.OPSDConfig(teacher_top_k=top_k), oracle)


def test_opsd_sampled():
    """Eq. 9: A = sg(log p_T(y) - log p_S(y)), loss -A log p_S(y) (ratio to the current p_S)."""
    def oracle(z, z0, nb):
        lp, lp0, lq, _ = lps(z, z0, nb, 1.1)
        return RO.tmean(-(lq - lp0) * np.exp(lp - lp0), nb["mask"])
    check(O.OPSDConfig(loss="sampled"), oracle)


def _unisd_aggregate(div, nb, agreement, gamma):
    """§6: token agreement: per sequence sum w l / sum w; sequence agreement: each sequence's
    token mean times exp(-gamma Var_k S^(k)), mean over sequences."""
    m = nb["mask"]
    rows = [i for i in range(len(m)) if m[i].any()]
    aux = nb["aux_teacher_logp"]
    if agreement == "token":
        w = RO.R.token_agreement_weights(aux, m, gamma, 0.95)
        return float(np.mean([np.sum((w * div)[i][m[i]]) / np.sum(w[i][m[i]]) for i in rows]))
    per = []
    for i in rows:
        s_k = aux[i][m[i]].mean(0)
        per.append(max(np.exp(-gamma * np.var(s_k)), 1e-6) * div[i][m[i]].mean())
    return float(np.mean(per))


def test_unisd_star():
    def oracle(z, z0, nb):
        m = nb["mask"]
        div = np.minimum(RO.kl(RO.lsm(nb["zt"], 0.7), RO.lsm(z, 0.7)), 3.0)
        lp, lq = RO.token_lp(z, nb["tokens"], 0.7), RO.token_lp(nb["zt"], nb["tokens"], 0.7)
        hinge = np.maximum(0.5 + np.abs(lp - lq) - np.abs(lp - nb["bad_teacher_logp"]), 0)
        hid = np.mean((nb["hidden"] - nb["teacher_hidden"]) ** 2, -1)
        seq = lambda x: np.mean([x[i][m[i]].mean() for i in range(len(m)) if m[i].any()])  # noqa
        return _unisd_aggregate(div, nb, "token", 1.0) + 0.1 * seq(hinge) + 0.1 * seq(hid)
    check(O.UniSDConfig(alpha=0.0, clip="static", clip_value=3.0, agreement="token",
                        contrastive_coef=0.1, hidden_coef=0.1), oracle)


def test_unisd_sequence_agreement_and_quantile_clip():
    def oracle(z, z0, nb):
        m = nb["mask"]
        div_fn = lambda a: RO.jsd(RO.lsm(a, 0.7), RO.lsm(nb["zt"], 0.7), 0.4)  # noqa: E731
        cap = RO.quantile(div_fn(z0), m, 0.8)
        return _unisd_aggregate(np.minimum(div_fn(z), cap), nb, "sequence", 2.0)
    check(O.UniSDConfig(alpha=0.4, clip="quantile", clip_q=0.8, agreement="sequence",
                        agreement_gamma=2.0), oracle)


def test_unisd_sequence_weight_scales_that_sequence():
    """Down-weighting one sequence (its auxiliary teachers disagree) lowers the loss by exactly
    (1 - w) * that sequence's token mean / number of sequences."""
    b, z, zt, nb = _setup(0)
    aux = np.zeros((4, 5, 3), np.float32)
    aux[2, :, :] = [[0.0, -1.0, -2.0]]  # row 2: Var_k of the per-teacher means = 2/3
    ex = {**b["extras"], "aux_teacher_logp": jnp.asarray(aux)}
    cfg = O.UniSDConfig(agreement="sequence", agreement_gamma=1.5)
    plain, _ = recipe_loss(O.UniSDConfig(), b, z, zt, extras=ex)
    weighted, _ = recipe_loss(cfg, b, z, zt, extras=ex)
    div = RO.kl(RO.lsm(nb["zt"], 0.7), RO.lsm(np.asarray(z, np.float64), 0.7))
    row2 = div[2][nb["mask"][2]].mean()
    expected = float(plain) - (1 - np.exp(-1.5 * 2 / 3)) * row2 / 4
    np.testing.assert_allclose(float(weighted), expected, rtol=1e-5)


@pytest.mark.parametrize("variant", ["sg", "plain", "tail", "intersect", "renormalized"])
def test_sg_topk(variant):
    def oracle(z, z0, nb):
        zt = nb["zt"]
        v = {"sg": lambda: RO.sg_topk_rkl(z, z0, zt, 5, 1.0),
             "plain": lambda: RO.topk_rkl(z, zt, 5, 1.0),
             "tail": lambda: RO.per_position(lambda a, at: float(
                 RO.R.student_topk_reverse_kl_tail(a[None], at[None], 5)[0]), z, zt),
             "intersect": lambda: RO.intersect_rkl(z, z0, zt, 5, 1.0),
             "renormalized": lambda: RO.per_position(lambda a, at: float(
                 RO.R.student_topk_renormalized_reverse_kl(a[None], at[None], 5)[0]), z, zt),
             }[variant]()
        return RO.tmean(v, nb["mask"])
    check(O.SGTopKConfig(k=5, variant=variant), oracle, grad_atol=1e-5)


@pytest.mark.parametrize("support,weights", [
    ("student", "student"), ("student", "teacher"), ("student", "uniform"),
    ("overlap", "student"), ("non_overlap", "student"), ("non_overlap", "uniform"),
    ("teacher", "teacher"), ("union", "student"), ("union", "uniform")])
def test_topk_opd(support, weights):
    check(O.TopKOPDConfig(k=4, support=support, weights=weights),
          lambda z, z0, nb: RO.tmean(RO.topk_pg(z, z0, nb["zt"], 4, 1.0, support, weights),
                                     nb["mask"]))


@pytest.mark.parametrize("support", ["student", "overlap"])
def test_topk_opd_ppo_with_behaviour_topk(support):
    """PPO clipping per top-k token against the behaviour policy's recorded top-k log-probs (a
    perturbed copy of the current ones, ratios 0.6-1.6 so that some clip)."""
    b, z, zt, nb = _setup(0)
    lp = jax.nn.log_softmax(z)
    top_lp, top_ids = jax.lax.top_k(lp, 4)
    noise = jax.random.uniform(jax.random.key(5), top_lp.shape, minval=-0.5, maxval=0.5)
    ex = {**b["extras"], "behavior_topk_ids": top_ids, "behavior_topk_logp": top_lp + noise}
    assert O.required_inputs(O.TopKOPDConfig(surrogate="ppo")) == {"behavior_topk_ids",
                                                                   "behavior_topk_logp"}
    check(O.TopKOPDConfig(k=4, support=support, surrogate="ppo", clip_eps=0.2),
          lambda z_, z0, nb_: RO.tmean(RO.topk_pg(
              z_, z0, nb_["zt"], 4, 1.0, support, "student", beh_ids=np.asarray(top_ids),
              beh_logp=np.asarray(top_lp + noise, np.float64), eps=0.2), nb_["mask"]),
          extras=ex)
