"""vOPD (Oh et al., arXiv 2605.07865) in the lab: does the closed-form baseline -KL(p || q) lower the
variance of the sampled-token OPD gradient, at the same expected gradient?

    python -m opd_jax.lab.reproduce control_variate [--mode smoke|quick|full]

Hardware and wall time (quick: 2 arms x 3 seeds x the baseline's steps, each evaluation also
taking 8 batches' gradients of both estimators): 15 min on 2 AMD EPYC CPU cores (2026-12-04).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/control_variate/<mode>/`` holds the
results.
"""

import numpy as np

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "KL for a KL: On-Policy Distillation with Control Variate Baseline (vOPD, Oh et al.)"
ARXIV = "2605.07865"
CLAIM = ("The closed-form value baseline -KL(p_t || q_t) lowers the variance of the sampled-token OPD "
         "gradient without changing its expectation, and trains at least as well.")
SETUP = ("2 arms from the baseline regime's student, steps and learning rate: 'opd' (Tinker's "
         "sampled-token advantage log q - log mu) and 'vopd' (the same plus KL(p_t || q_t), full "
         "vocabulary), importance-sampling loss. At every evaluation of either arm (measure "
         "grad_variance:S, S = 8 batches in quick and full, 2 in smoke): the gradients of both "
         "estimators' losses on the same S batches of the run's first training prompts, each batch "
         "sampled with its own key at the arm's current parameters, through the project's train step; "
         "the total variance over batches of each, their log ratio, and the mean-gradient gap "
         "(about 1 when the two expectations agree). Also sampled pass@1.")
RULE = ("Part 'variance': per seed, the mean over the 'opd' arm's evaluations of log(var_vopd / var_opd) "
        "is below 0 by more than 2 standard errors over seeds (paired: both estimators on the same "
        "batches). Part 'trains as well': 'vopd''s final pass@1 is not below 'opd''s by more than 2 "
        "pooled standard errors (non-inferiority). Reproduced if both hold; not reproduced if either is "
        "reversed by that margin; inconclusive otherwise (and with fewer than 3 seeds). The mean-gradient "
        "gap is reported beside the verdict.")
FIGURE = ("grad_variance/log_ratio", "grad_variance/opd", "grad_variance/vopd", "grad_variance/mean_gap",
          "pass@1")


def schedule(mode: str):
    batches = 2 if mode == "smoke" else 8
    return S.schedule(mode, measures=(f"grad_variance:{batches}",))


def arms(mode: str):
    return [BL.arm("opd", O.OPDConfig(), mode), BL.arm("vopd", O.VOPDConfig(), mode)]


def _over_evals(results, metric):
    return [float(np.mean([e[metric] for e in r["evals"]])) for r in results if r["arm"] == "opd"]


def verdict(results, mode):
    parts = [V.paired("variance", _over_evals(results, "grad_variance/log_ratio"),
                      label="log(var_vopd / var_opd)", metric="grad_variance/log_ratio"),
             V.not_worse(results, "pass@1", "vopd", "opd", name="trains as well")]
    notes = {"mean_gap": V.stats(_over_evals(results, "grad_variance/mean_gap"))}
    return V.combine(parts, RULE, notes)
