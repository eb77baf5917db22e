"""POPD and TOPD ("Are Full Rollouts Necessary for On-Policy Distillation?", Zhang et al., arXiv
2605.31490) in the lab: sampled-token OPD whose loss counts only each completion's first tokens, a
fixed tenth of them (TOPD) or a horizon growing to the whole completion (POPD).

    python -m opd_jax.lab.reproduce rollout_horizon [--mode smoke|quick|full]

Hardware and wall time (quick: 3 arms x 3 seeds x the baseline's steps): 22 min on 2 AMD
EPYC CPU cores (2026-12-06).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/rollout_horizon/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "Are Full Rollouts Necessary for On-Policy Distillation? (POPD / TOPD, Zhang et al.)"
ARXIV = "2605.31490"
CLAIM = ("Distilling only on a truncated rollout horizon works: a horizon that grows during training (POPD) "
         "reaches OPD's accuracy in fewer steps, and a fixed 10% of the horizon (TOPD) matches OPD.")
FRACTION = 0.1
SETUP = ("3 arms from the baseline regime's student, steps and learning rate, on the student's samples, all "
         "Tinker's sampled-token OPD (importance-sampling surrogate): 'opd' (every completion token, "
         f"O.OPDConfig), 'topd' (each completion's first max(floor({FRACTION} L), 1) tokens, L its length: "
         f"O.HorizonOPDConfig(mode='fixed_fraction')) and 'popd' (the horizon growing linearly from TOPD's to "
         "the whole completion over the first half of the steps: mode='growing'); both average over the kept "
         "tokens. The horizon is applied to the loss only: the student still samples whole completions "
         "(the paper also stops generating at the horizon, which saves compute but not steps). Evaluated "
         "every quarter of the regime's interval. Metrics: sampled pass@1 on held-out problems at the last "
         "evaluation, and the steps each run takes to reach the start's pass@1 plus half the 'opd' arm's "
         "mean gain (a run that never does counts one interval past the end).")
RULE = ("Part 'TOPD matches OPD': topd's pass@1 at the last evaluation is not below opd's by more than 2 pooled "
        "standard errors over seeds (non-inferiority). Part 'POPD is faster': popd takes fewer steps than opd "
        "to the target above, by more than 2 pooled standard errors. Reproduced if both hold; not reproduced "
        "if either is reversed by that margin; inconclusive otherwise (and with fewer than 3 seeds).")
FIGURE = ("pass@1", "greedy_pass@1", "reverse_kl", "entropy")


def schedule(mode: str):
    return S.schedule(mode, every=max(1, BL.budget(mode).schedule.every // 2))


def arms(mode: str):
    grow = max(1, BL.budget(mode).steps // 2)
    return [BL.arm("opd", O.OPDConfig(), mode),
            BL.arm("topd", O.HorizonOPDConfig(mode="fixed_fraction", fraction=FRACTION), mode),
            BL.arm("popd", O.HorizonOPDConfig(mode="growing", fraction=FRACTION, grow_steps=grow), mode)]


def verdict(results, mode):
    matches = V.not_worse(results, "pass@1", "topd", "opd", name="TOPD matches OPD")
    faster, notes = V.faster_to_half_gain(results, "popd", "opd", name="POPD is faster", also=("topd",))
    return V.combine([matches, faster], RULE, notes)
