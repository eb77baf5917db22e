"""TIP (Xu et al., arXiv 2604.14084) in the lab: which tokens carry OPD's signal? The top half by
the soft-OR of student entropy and teacher-student divergence, a random half, the few
overconfident-and-wrong tokens, against all tokens.

    python -m opd_jax.lab.reproduce token_importance [--mode smoke|quick|full]

Hardware and wall time (quick: 6 arms x 3 seeds x the baseline's steps): 21 min on 2 AMD EPYC CPU
cores (2026-12-04). The set-up, the arms per mode, the metrics and the verdict rule (written before
any run) are the constants and functions below; ``experiments/lab/results/token_importance/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import verdicts as V

PAPER = "TIP: Token Importance in On-Policy Distillation (Xu et al.)"
ARXIV = "2604.14084"
CLAIM = ("Training on the top 50% of tokens by the soft-OR score (student entropy, teacher-student "
         "divergence) matches training on all tokens, training on the <10% low-entropy high-divergence "
         "tokens comes close, and a random 50% does worse.")
SETUP = ("6 arms from the baseline regime's student, steps and learning rate, all TIP's full-vocabulary "
         "reverse KL averaged over the kept tokens: 'all' (every token), 'soft_or_<rho>' (the top rho of "
         "the batch's tokens by the soft-OR of min-max-normalised student entropy and JSD to the "
         "teacher, rho in {0.5, 0.2, 0.1}), 'random_0.5' (half the tokens, uniformly drawn) and 'q3' "
         "(the tokens with normalised entropy below 0.5 and divergence above 0.5). Metric: sampled "
         "pass@1 at the last evaluation; each arm's kept token fraction is reported (TIP's 'tip/kept_frac').")
RULE = ("Part 'soft-OR 50% matches all': 'soft_or_0.5' is not below 'all' on pass@1 by more than 2 "
        "pooled standard errors (a weak, non-inferiority test: see the numbers). Part 'random 50% does "
        "worse': 'soft_or_0.5' > 'random_0.5' on pass@1 by more than 2 pooled standard errors. Part "
        "'Q3 comes close': 'q3''s final pass@1 is not below the halfway point between the start and "
        "'all''s final pass@1 (per seed) by more than 2 pooled standard errors. Reproduced if all three "
        "hold; not reproduced if any is reversed; inconclusive otherwise (and with fewer than 3 seeds).")
FIGURE = ("pass@1", "greedy_pass@1", "pass@k", "reverse_kl")
FRACTIONS = (0.5, 0.2, 0.1)


def arms(mode: str):
    out = [BL.arm("all", O.TIPConfig(select="all"), mode)]
    out += [BL.arm(f"soft_or_{f:g}", O.TIPConfig(select="soft_or", frac=f), mode) for f in FRACTIONS]
    out += [BL.arm("random_0.5", O.TIPConfig(select="random", frac=0.5), mode),
            BL.arm("q3", O.TIPConfig(select="q3"), mode)]
    return out


def verdict(results, mode):
    start = V.stats(V.start(results, "pass@1", "all"))["mean"]
    halfway = [start + (x - start) / 2 for x in V.final(results, "pass@1", "all")]
    parts = [V.not_worse(results, "pass@1", "soft_or_0.5", "all", name="soft-OR 50% matches all"),
             V.better(results, "pass@1", "soft_or_0.5", "random_0.5", name="random 50% does worse"),
             V.compare("Q3 comes close", V.final(results, "pass@1", "q3"), halfway, a_label="q3",
                       b_label="halfway to all", metric="pass@1", kind="not_worse")]
    notes = {"kept_fraction": {a.name: V.train_mean(results, a.name, "tip/kept_frac") for a in arms(mode)}}
    return V.combine(parts, RULE, notes)
