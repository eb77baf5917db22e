"""Thinking Machines' "On-Policy Distillation" (Lu et al., 2025) in the lab: sampled-token OPD
against supervised training on teacher samples and against RL with the verifier's reward, at
equal steps and at equal FLOPs.

    python -m opd_jax.lab.reproduce opd_vs_sft_vs_rl [--mode smoke|quick|full]

Hardware and wall time (quick: 3 arms x 3 seeds x the baseline's steps): 43 min on 2 CPU cores
(2026-12-03).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/opd_vs_sft_vs_rl/<mode>/`` holds the
results and the figures against steps and against FLOPs.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import verdicts as V

PAPER = "On-Policy Distillation (Thinking Machines Lab blog, Lu et al.)"
ARXIV = ""  # a blog post (thinkingmachines.ai/blog/on-policy-distillation), no arXiv id
CLAIM = ("Sampled-token reverse-KL OPD brings the student toward the teacher's level in far fewer "
         "steps and FLOPs than supervised training on teacher samples or RL with the verifier's reward.")
SETUP = ("3 arms from the baseline regime's student, steps and learning rate: 'opd' (Tinker's "
         "sampled-token reverse KL, A_t = log q(y_t) - log mu(y_t), importance-sampling loss), 'sft' "
         "(the regime's off-policy control, BL.CONTROL: cross-entropy on the teacher's samples of the same "
         "prompts, prompts x samples per step) and "
         "'rl' (REINFORCE on the student's samples with the verifier's 0/1 reward, batch-mean baseline). "
         "Metric: sampled pass@1 on held-out problems, at the last evaluation (equal steps) and at the "
         "largest FLOPs budget every run reached (equal compute; linear interpolation between "
         "evaluations; FLOPs count sampling, teacher scoring and the update).")
RULE = ("Four parts, each 'opd' against one rival on pass@1: opd > sft and opd > rl at the last "
        "evaluation, and opd > sft and opd > rl at the common FLOPs budget, each by more than 2 pooled "
        "standard errors over seeds. Reproduced if all four hold; not reproduced if any is reversed by "
        "that margin; inconclusive otherwise (and with fewer than 3 seeds).")
FIGURE = ("pass@1", "greedy_pass@1", "pass@k")
X = ("step", "flops")
ARMS = ("opd", "sft", "rl")


def arms(mode: str):
    return [BL.arm("opd", O.OPDConfig(), mode),
            BL.arm("sft", BL.CONTROL, mode, source="teacher"),
            BL.arm("rl", O.ReinforceConfig(), mode)]


def verdict(results, mode):
    flops = V.common_flops(results, ARMS)
    parts = [V.better(results, "pass@1", "opd", rival, name=f"opd vs {rival} (equal steps)")
             for rival in ("sft", "rl")]
    at = {a: V.values_at_flops(results, "pass@1", a, flops) for a in ARMS}
    parts += [V.compare(f"opd vs {rival} (equal FLOPs)", at["opd"], at[rival], a_label="opd",
                        b_label=rival, metric=f"pass@1 at {flops:.3g} FLOPs") for rival in ("sft", "rl")]
    return V.combine(parts, RULE, {"common_flops": flops})
