"""PowerOPD (Zhao et al., arXiv 2606.17199) in the lab: sampled-token OPD with the Box-Cox reward
``((q/mu)^alpha - 1) / alpha`` in place of the log-ratio, against the log-ratio itself and the exact
full-vocabulary reverse KL.

    python -m opd_jax.lab.reproduce power_transform [--mode smoke|quick|full]

Hardware and wall time (quick: 5 arms x 3 seeds x the baseline's steps): 23 min for the first 4
arms on 2 AMD EPYC CPU cores (2026-12-06), 8 more for the fifth.
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/power_transform/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "PowerOPD: Stabilizing On-Policy Distillation with Bounded Power Transformation (Zhao et al.)"
ARXIV = "2606.17199"
CLAIM = ("Replacing sampled-token OPD's unbounded log-ratio reward by its Box-Cox power transform (alpha > 0) "
         "trains a better student than the log-ratio and than the exact full-vocabulary reverse KL, and "
         "larger alpha generally does better.")
SETUP = ("4 arms from the baseline regime's student, steps and learning rate, on the student's samples: "
         "'sampled' (Tinker's sampled-token OPD, advantage log q - log mu, importance-sampling surrogate: "
         "O.OPDConfig), 'power_0.5' and 'power_1' (the same surrogate with the advantage "
         "((q/mu)^alpha - 1)/alpha, alpha 0.5 and 1, no clip: O.PowerOPDConfig) and 'full' (the regime's "
         "exact full-vocabulary reverse KL, BL.OPD). Added after the first run, to test its reading (the "
         "transform's expected gradient is an alpha-divergence's, mode-seeking below alpha 0): 'power_-0.5' "
         "(alpha -0.5), judged in the notes. Metric: sampled pass@1 on held-out problems at the "
         "last evaluation; greedy pass@1, pass@8, entropy and reverse KL to the teacher reported.")
RULE = ("Three parts on pass@1 at the last evaluation, each by more than 2 pooled standard errors over "
        "seeds: 'beats the log-ratio' (power_1 > sampled), 'beats the full-vocabulary KL' (power_1 > full), "
        "'larger alpha helps' (power_1 > power_0.5). Reproduced if all three hold; not reproduced if any "
        "is reversed by that margin; inconclusive otherwise (and with fewer than 3 seeds). The alpha -0.5 arm, "
        "added after the first run, is compared with the log-ratio in the notes ('negative_alpha': the "
        "reading predicts it no worse than 'sampled'), not in the verdict.")
FIGURE = ("pass@1", "greedy_pass@1", "reverse_kl", "entropy")


def schedule(mode: str):
    return S.schedule(mode)


def arms(mode: str):
    return [BL.arm("sampled", O.OPDConfig(), mode),
            BL.arm("power_0.5", O.PowerOPDConfig(alpha=0.5), mode),
            BL.arm("power_1", O.PowerOPDConfig(alpha=1.0), mode),
            BL.arm("full", BL.OPD, mode),
            BL.arm("power_-0.5", O.PowerOPDConfig(alpha=-0.5), mode)]


def verdict(results, mode):
    parts = [V.better(results, "pass@1", "power_1", "sampled", name="beats the log-ratio"),
             V.better(results, "pass@1", "power_1", "full", name="beats the full-vocabulary KL"),
             V.better(results, "pass@1", "power_1", "power_0.5", name="larger alpha helps")]
    negative = V.not_worse(results, "pass@1", "power_-0.5", "sampled", name="alpha -0.5 no worse than the log-ratio")
    return V.combine(parts, RULE, {"negative_alpha": negative})
