"""Draft-OPD (arXiv 2605.29343): does the weight on the error positions (our reconstruction of the
paper's replay) add anything to target-assisted rollouts? From the small drafter start
(``weak_small``), where ``speculative_drafter_small`` found the rollouts themselves to help.

    python -m opd_jax.lab.reproduce speculative_replay_small [--mode smoke|quick|full]

Hardware and wall time (quick: 3 arms x 3 seeds x the baseline's steps): see the experiments
README's table (2 AMD EPYC CPU cores).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/speculative_replay_small/<mode>/`` holds
the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V
from opd_jax.lab.measures import ACCEPTANCE_SAMPLES

PAPER = "Draft-OPD: on-policy distillation for speculative-decoding drafters (the replay of error positions)"
ARXIV = "2605.29343"
CLAIM = ("On target-assisted rollouts, replaying the drafting from the error positions that verification "
         "exposes raises the drafter's acceptance length over training on the rollouts alone.")
GAMMA = 4  # draft tokens per target forward, in training and in the measure
STUDENT = "weak_small"  # 1 layer x 64 (the teacher: 4 x 256)
ASSISTED = (f"loop.draft_tokens={GAMMA}",)
SETUP = (f"3 arms from the '{STUDENT}' student start, the baseline regime's teacher (the target), steps and "
         f"learning rate, all on target-assisted rollouts (loop.draft_tokens={GAMMA}: speculative sampling "
         f"with the student drafting {GAMMA} tokens per teacher forward) and O.DraftOPDConfig's total "
         f"variation at every completion position: 'tv_assisted' (no weight), 'draft_opd' (the positions "
         f"where the teacher rejected a draft weighted 2: error_weight 1) and 'draft_opd_w4' (weighted 4: "
         f"error_weight 3). The paper's replay is reconstructed as that weight: a drafter's state at an error "
         f"position is the rollout's own prefix there, which a full-distribution loss already sees once; "
         f"replaying it is seeing it again. Metric (measure acceptance:{GAMMA}, {ACCEPTANCE_SAMPLES} samples "
         f"per held-out problem at temperature 1): acceptance/length at the last evaluation; "
         f"acceptance/rate, pass@1 and reverse KL reported.")
RULE = ("Part 'replay helps': draft_opd's acceptance/length at the last evaluation exceeds tv_assisted's by "
        "more than 2 pooled standard errors over seeds. Reproduced if it holds; not reproduced if reversed "
        "by that margin; inconclusive otherwise (and with fewer than 3 seeds). draft_opd_w4 against "
        "tv_assisted is reported beside the verdict, not decisive.")
FIGURE = ("acceptance/length", "acceptance/rate", "pass@1", "reverse_kl")


def schedule(mode: str):
    return S.schedule(mode, measures=(f"acceptance:{GAMMA}",))


def arms(mode: str):
    return [BL.arm("tv_assisted", O.DraftOPDConfig(error_weight=0.0), mode, student=STUDENT, overrides=ASSISTED),
            BL.arm("draft_opd", O.DraftOPDConfig(error_weight=1.0), mode, student=STUDENT, overrides=ASSISTED),
            BL.arm("draft_opd_w4", O.DraftOPDConfig(error_weight=3.0), mode, student=STUDENT,
                   overrides=ASSISTED)]


def verdict(results, mode):
    length = "acceptance/length"
    parts = [V.better(results, length, "draft_opd", "tv_assisted", name="replay helps")]
    notes = {"draft_opd_w4 vs tv_assisted": V.describe(V.better(results, length, "draft_opd_w4", "tv_assisted")),
             **{f"{arm}_sample_acceptance": V.train_mean(results, arm, "sample/acceptance_length")
                for arm in ("tv_assisted", "draft_opd", "draft_opd_w4")}}
    return V.combine(parts, RULE, notes)
