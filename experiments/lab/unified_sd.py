"""UniSD (Jin et al., arXiv 2605.06597) in the lab: which of self-distillation's five mechanisms
(divergence clipping, multi-teacher agreement, token contrast, hidden-state matching, an EMA
teacher) helps most?

    python -m opd_jax.lab.reproduce unified_sd [--mode smoke|quick|full]

Needs the lab model ``contextual`` (see ``self_distillation``). Hardware and wall time (quick:
7 arms x 3 seeds x the baseline's steps): 24 min on 2 AMD EPYC CPU cores (2026-12-04), after
building ``contextual`` (about 4 min). The set-up, the arms per mode, the metrics and the
verdict rule (written before any run) are the constants and functions below;
``experiments/lab/results/unified_sd/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import setups as S
from opd_jax.lab import variants
from opd_jax.lab import verdicts as V

PAPER = "UniSD: Unified Self-Distillation (Jin et al.)"
ARXIV = "2605.06597"
CLAIM = "Of UniSD's five self-distillation mechanisms, the EMA teacher is the most useful."
MECHANISMS = ("clip", "agreement", "contrastive", "hidden", "ema")
SETUP = ("7 arms of UniSD's objective (forward KL at loss temperature 0.7, its default) from the "
         "'contextual' student, the teacher its own weights reading a reference solution (a hint) before "
         "the problem, the baseline regime's steps and learning rate: 'base' (frozen initial teacher, no "
         "mechanism), one arm per mechanism switched on alone: 'clip' (per-token divergence clipped at "
         "the batch's 0.99 quantile: the static clip of 10 nats never binds in the lab), 'agreement' "
         "(token weights from the disagreement of two auxiliary teachers reading other solutions of the "
         "problem, gamma 1), 'contrastive' (hinge against a bad teacher reading a wrong solution, weight "
         "0.1), 'hidden' (final hidden-state matching, weight 0.1), 'ema' (the teacher an EMA of the "
         "student, 0.9 every 10 steps), and 'all' (UniSD*: agreement, contrastive, hidden and EMA). "
         "Metric: sampled pass@1 without context.")
RULE = ("One part per other mechanism m in {clip, agreement, contrastive, hidden}: 'ema' > m on pass@1 "
        "at the last evaluation; and part 'useful': 'ema' > 'base'. Each by more than 2 pooled standard "
        "errors over seeds. Reproduced if all five hold; not reproduced if any is reversed by that "
        "margin; inconclusive otherwise (and with fewer than 3 seeds).")
FIGURE = ("pass@1", "greedy_pass@1", "pass@k", "entropy")
def arms(mode: str):
    configs = {"base": O.UniSDConfig(), "clip": O.UniSDConfig(clip="quantile", clip_q=0.99),
               "agreement": O.UniSDConfig(agreement="token"),
               "contrastive": O.UniSDConfig(contrastive_coef=0.1), "hidden": O.UniSDConfig(hidden_coef=0.1),
               "ema": O.UniSDConfig(),
               "all": O.UniSDConfig(agreement="token", contrastive_coef=0.1, hidden_coef=0.1)}
    teacher = {"ema": "ema", "all": "ema"}
    return [S.context_arm(name, cfg, mode, data=variants.UNISD, teacher=teacher.get(name, "initial"))
            for name, cfg in configs.items()]


def verdict(results, mode):
    parts = [V.better(results, "pass@1", "ema", m, name=f"ema vs {m}") for m in MECHANISMS if m != "ema"]
    parts.append(V.better(results, "pass@1", "ema", "base", name="useful"))
    notes = {"all vs base": V.describe(V.better(results, "pass@1", "all", "base"))}
    return V.combine(parts, RULE, notes)
