"""Draft-OPD (arXiv 2605.29343) in the lab: the student trained as a speculative-decoding drafter
for the teacher, on target-assisted rollouts with the rejected drafts' positions weighted, against
OPD on its own samples.

    python -m opd_jax.lab.reproduce speculative_drafter [--mode smoke|quick|full]

Hardware and wall time (quick: 5 arms x 3 seeds x the baseline's steps): see the experiments
README's table (2 AMD EPYC CPU cores).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/speculative_drafter/<mode>/`` holds the
results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab.measures import ACCEPTANCE_SAMPLES
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "Draft-OPD: on-policy distillation for speculative-decoding drafters"
ARXIV = "2605.29343"
CLAIM = ("Training a drafter on target-assisted rollouts (speculative decoding, the target verifying), "
         "with replay of drafting from the error positions verification exposes, raises its acceptance "
         "length over on-policy distillation on the drafter's own samples.")
GAMMA = 4  # draft tokens per target forward, in training and in the measure
SETUP = (f"5 arms from the baseline regime's student (the drafter), teacher (the target), steps and learning "
         f"rate: 'opd' (Tinker's sampled-token OPD on the student's own samples); three arms of "
         f"O.DraftOPDConfig (the total variation to the teacher at every completion position, 1 minus the "
         f"chance the teacher accepts the student's draft there): 'tv_own' (the student's own samples, no "
         f"weight), 'tv_assisted' (target-assisted rollouts: loop.draft_tokens={GAMMA}, speculative "
         f"sampling with the student drafting {GAMMA} tokens per teacher forward; no weight) and "
         f"'draft_opd' (the same, positions where the teacher rejected a draft weighted 2: error_weight 1); "
         f"and 'fkl_draft_opd' (as draft_opd with the forward KL). The paper's replay is reconstructed as "
         f"that weight: a drafter's state at an error position is the rollout's own prefix there, so a "
         f"full-distribution loss already sees it. Metric (measure acceptance:{GAMMA}, the student "
         f"drafting for the teacher on the evaluation's held-out problems, {ACCEPTANCE_SAMPLES} samples each "
         f"at temperature 1): acceptance/length, completion tokens per teacher forward, at the last evaluation; "
         f"acceptance/rate, the student's own pass@1 and reverse KL reported.")
RULE = ("Part 'beats OPD': draft_opd's acceptance/length at the last evaluation exceeds opd's. Part "
        "'target-assisted rollouts help': draft_opd's exceeds tv_own's. Each by more than 2 pooled "
        "standard errors over seeds. Reproduced if both hold; not reproduced if either is reversed by that "
        "margin; inconclusive otherwise (and with fewer than 3 seeds). tv_assisted against tv_own and "
        "draft_opd against tv_assisted (the weight alone) are reported beside the verdict, not decisive; "
        "so is fkl_draft_opd.")
FIGURE = ("acceptance/length", "acceptance/rate", "pass@1", "reverse_kl")
ASSISTED = (f"loop.draft_tokens={GAMMA}",)


def schedule(mode: str):
    return S.schedule(mode, measures=(f"acceptance:{GAMMA}",))


def arms(mode: str):
    return [BL.arm("opd", O.OPDConfig(), mode),
            BL.arm("tv_own", O.DraftOPDConfig(error_weight=0.0), mode),
            BL.arm("tv_assisted", O.DraftOPDConfig(error_weight=0.0), mode, overrides=ASSISTED),
            BL.arm("draft_opd", O.DraftOPDConfig(error_weight=1.0), mode, overrides=ASSISTED),
            BL.arm("fkl_draft_opd", O.DraftOPDConfig(divergence="forward_kl", error_weight=1.0), mode,
                   overrides=ASSISTED)]


def verdict(results, mode):
    length = "acceptance/length"
    parts = [V.better(results, length, "draft_opd", "opd", name="beats OPD"),
             V.better(results, length, "draft_opd", "tv_own", name="target-assisted rollouts help")]
    notes = {"tv_assisted vs tv_own": V.describe(V.better(results, length, "tv_assisted", "tv_own")),
             "draft_opd vs tv_assisted": V.describe(V.better(results, length, "draft_opd", "tv_assisted")),
             "fkl_draft_opd vs draft_opd": V.describe(V.better(results, length, "fkl_draft_opd", "draft_opd")),
             "draft_opd_sample_acceptance": V.train_mean(results, "draft_opd", "sample/acceptance_length")}
    return V.combine(parts, RULE, notes)
