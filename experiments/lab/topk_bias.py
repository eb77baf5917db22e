"""The Many Faces of OPD (Zhu et al., arXiv 2605.11182) in the lab: does the plain top-k reverse KL
push the student's probability into the tail of its vocabulary, and does the stop-gradient form
not?

    python -m opd_jax.lab.reproduce topk_bias [--mode smoke|quick|full]

Hardware and wall time (quick: 4 arms x 3 seeds x the baseline's steps): 21 min on 2 AMD EPYC
CPU cores (2026-12-04).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/topk_bias/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "The Many Faces of On-Policy Distillation (Zhu et al.)"
ARXIV = "2605.11182"
CLAIM = ("The plain top-k reverse KL has a biased gradient that pushes the student's mass out of its "
         "top-k into the tail and destabilizes training; the stop-gradient top-k objective does not.")
K = 4  # the lab's vocabulary has 50 tokens: top-4 leaves a tail, as the paper's top-20 of ~150k does
SETUP = (f"4 arms from the baseline regime's student, steps and learning rate: 'full_rkl' (the full-"
         f"vocabulary reverse KL), 'topk' (the reverse KL summed over the student's top-{K}, gradient "
         f"through every term), 'topk_sg' (the same with log p stop-gradient: the Many Faces fix) and "
         f"'topk_tail' (top-{K} plus one tail bucket). Measured on the evaluation's samples against the "
         f"teacher (measure tail_mass:{K}): the student's mass outside its own top-{K} and outside the "
         f"teacher's; the exact reverse KL to the teacher; sampled pass@1.")
RULE = ("Part 'tail': 'topk' > 'topk_sg' on tail_mass/student_topk at the last evaluation. Part "
        "'exact KL': 'topk_sg' < 'topk' on reverse_kl. Part 'sg does not': 'topk_sg''s tail mass is not "
        "above 'full_rkl''s by more than 2 pooled standard errors (non-inferiority). The first two by "
        "more than 2 pooled standard errors over seeds. Reproduced if all three hold; not reproduced if "
        "any is reversed by that margin; inconclusive otherwise (and with fewer than 3 seeds).")
FIGURE = ("tail_mass/student_topk", "tail_mass/teacher_topk", "reverse_kl", "pass@1", "entropy")


def schedule(mode: str):
    return S.schedule(mode, measures=(f"tail_mass:{K}",))


def arms(mode: str):
    return [BL.arm("full_rkl", O.GKDConfig(beta=1.0), mode),
            BL.arm("topk", O.SGTopKConfig(k=K, variant="plain"), mode),
            BL.arm("topk_sg", O.SGTopKConfig(k=K, variant="sg"), mode),
            BL.arm("topk_tail", O.SGTopKConfig(k=K, variant="tail"), mode)]


def verdict(results, mode):
    parts = [V.better(results, "tail_mass/student_topk", "topk", "topk_sg", name="tail"),
             V.better(results, "reverse_kl", "topk_sg", "topk", name="exact KL", lower=True),
             V.not_worse(results, "tail_mass/student_topk", "topk_sg", "full_rkl", name="sg does not",
                         lower=True)]
    return V.combine(parts, RULE)
