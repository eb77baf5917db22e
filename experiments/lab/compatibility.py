"""Rethinking OPD (Li et al., arXiv 2604.13016) in the lab: a teacher whose answers are written in
the student's format against one writing them backward, and an off-policy cold start on the
incompatible teacher's answers.

    python -m opd_jax.lab.reproduce compatibility [--mode smoke|quick|full]

Needs the lab model ``teacher_backward`` (``opd_jax.lab.zoo``: the teacher's recipe on
backward-format solutions). Hardware and wall time (quick: 3 arms x 3 seeds x the baseline's
steps): 17 min on 2 AMD EPYC CPU cores (2026-12-04), after building ``teacher_backward`` (about
22 min). The set-up, the arms per mode, the metrics and the verdict rule (written before any run)
are the constants and functions below; ``experiments/lab/results/compatibility/<mode>/`` holds
the results.
"""

from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import variants
from opd_jax.lab import verdicts as V

PAPER = "Rethinking On-Policy Distillation of LLMs: Phenomenology, Mechanism, and Recipe (Li et al.)"
ARXIV = "2604.13016"
CLAIM = ("A teacher compatible with the student's thinking pattern raises the top-k overlap and OPD "
         "succeeds; an incompatible one stalls; an off-policy cold start on the teacher's rollouts "
         "rescues it.")
K = 4  # top-k of the overlap measures (the lab's vocabulary has 50 tokens; the paper's k=16 of ~150k)
SETUP = ("3 arms with the lab's baseline OPD objective, student, steps and learning rate: "
         "'compatible' (the lab's teacher, forward-format answers like the student's), 'incompatible' "
         "(teacher_backward: the same recipe on the same solutions written backward, target first) and "
         "'incompatible_cold_start' (teacher_backward, the first quarter of the steps supervised on its "
         "rollouts, then OPD). Answers are verified in either format. Measured against each arm's own "
         f"teacher on the evaluation's samples (measure overlap:{K}): top-{K} overlap ratio, overlap mass "
         "of each model, overlap-token advantage, entropy gap; and sampled pass@1.")
RULE = ("Part 'overlap': 'compatible' > 'incompatible' on overlap/ratio at the last evaluation. Part "
        "'stalls': 'compatible' > 'incompatible' on pass@1. Part 'rescue': 'incompatible_cold_start' > "
        "'incompatible' on pass@1. Each by more than 2 pooled standard errors over seeds. Reproduced if "
        "all three hold; not reproduced if any is reversed by that margin; inconclusive otherwise (and "
        "with fewer than 3 seeds).")
FIGURE = ("overlap/ratio", "overlap/mass_student", "overlap/advantage", "overlap/entropy_gap", "pass@1",
          "greedy_pass@1")


def schedule(mode: str):
    return S.schedule(mode, measures=(f"overlap:{K}",), test=variants.TEST_EITHER)


def arms(mode: str):
    cold = max(1, BL.budget(mode).steps // 4)
    return [BL.arm("compatible", BL.OPD, mode, teacher="teacher"),
            BL.arm("incompatible", BL.OPD, mode, teacher="teacher_backward"),
            BL.arm("incompatible_cold_start", BL.OPD, mode, teacher="teacher_backward",
                   overrides=(f"loop.cold_start_steps={cold}",))]


def verdict(results, mode):
    parts = [V.better(results, "overlap/ratio", "compatible", "incompatible", name="overlap"),
             V.better(results, "pass@1", "compatible", "incompatible", name="stalls"),
             V.better(results, "pass@1", "incompatible_cold_start", "incompatible", name="rescue")]
    return V.combine(parts, RULE)
