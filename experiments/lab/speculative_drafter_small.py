"""Draft-OPD (arXiv 2605.29343) in the lab with a drafter far smaller than its target: the
``speculative_drafter`` comparison again from a 1-layer, 64-wide student start (``weak_small``),
where the prefixes a drafter sees under speculative decoding differ more from its own samples.

    python -m opd_jax.lab.reproduce speculative_drafter_small [--mode smoke|quick|full]

Hardware and wall time (quick: 3 arms x 3 seeds x the baseline's steps): see the experiments
README's table (2 AMD EPYC CPU cores).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/speculative_drafter_small/<mode>/`` holds
the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V
from opd_jax.lab.measures import ACCEPTANCE_SAMPLES

PAPER = "Draft-OPD: on-policy distillation for speculative-decoding drafters (a small drafter)"
ARXIV = "2605.29343"
CLAIM = ("Training a drafter on target-assisted rollouts (speculative decoding, the target verifying), "
         "with replay of drafting from the error positions verification exposes, raises its acceptance "
         "length over on-policy distillation on the drafter's own samples.")
GAMMA = 4  # draft tokens per target forward, in training and in the measure
STUDENT = "weak_small"  # 1 layer x 64 (the teacher: 4 x 256), the weak start's recipe otherwise
SETUP = (f"3 arms from the '{STUDENT}' student start (the weak start's recipe at one layer and half the "
         f"width), the baseline regime's teacher (the target), steps and learning rate: 'opd' (Tinker's "
         f"sampled-token OPD on the student's own samples), 'tv_own' (O.DraftOPDConfig without weight: the "
         f"total variation to the teacher at every position of the student's own samples) and 'draft_opd' "
         f"(target-assisted rollouts, loop.draft_tokens={GAMMA}, the rejected drafts' positions weighted 2). "
         f"The arms, metric and rule of speculative_drafter, whose 2 x 128 drafter was already close to the "
         f"teacher (75% of drafts accepted before training). Metric (measure acceptance:{GAMMA}, "
         f"{ACCEPTANCE_SAMPLES} samples per held-out problem at temperature 1): acceptance/length at the last "
         f"evaluation; acceptance/rate, pass@1 and reverse KL reported.")
RULE = ("Part 'beats OPD': draft_opd's acceptance/length at the last evaluation exceeds opd's. Part "
        "'target-assisted rollouts help': draft_opd's exceeds tv_own's. Each by more than 2 pooled "
        "standard errors over seeds. Reproduced if both hold; not reproduced if either is reversed by that "
        "margin; inconclusive otherwise (and with fewer than 3 seeds).")
FIGURE = ("acceptance/length", "acceptance/rate", "pass@1", "reverse_kl")


def schedule(mode: str):
    return S.schedule(mode, measures=(f"acceptance:{GAMMA}",))


def arms(mode: str):
    return [BL.arm("opd", O.OPDConfig(), mode, student=STUDENT),
            BL.arm("tv_own", O.DraftOPDConfig(error_weight=0.0), mode, student=STUDENT),
            BL.arm("draft_opd", O.DraftOPDConfig(error_weight=1.0), mode, student=STUDENT,
                   overrides=(f"loop.draft_tokens={GAMMA}",))]


def verdict(results, mode):
    length = "acceptance/length"
    parts = [V.better(results, length, "draft_opd", "opd", name="beats OPD"),
             V.better(results, length, "draft_opd", "tv_own", name="target-assisted rollouts help")]
    return V.combine(parts, RULE, {"draft_opd_sample_acceptance": V.train_mean(results, "draft_opd",
                                                                               "sample/acceptance_length")})
