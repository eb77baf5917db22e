"""Fu et al. (arXiv 2603.25562) in the lab: whose top-K should a truncated OPD objective match, the
teacher's (local support matching) or the student's, and how does the stop-gradient top-K
compare?

    python -m opd_jax.lab.reproduce topk_support [--mode smoke|quick|full]

Hardware and wall time (quick: 4 arms x 3 seeds x the baseline's steps): 21 min on 2 AMD EPYC
CPU cores (2026-12-04).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/topk_support/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "Top-K local support matching for on-policy distillation (Fu et al.)"
ARXIV = "2603.25562"
CLAIM = ("Restricting OPD's per-token objective to the teacher's top-K (matching the teacher's local "
         "support) trains the student better than restricting it to the student's own top-K, and no "
         "worse than the stop-gradient student top-K objective.")
K = 4  # of the lab's 50-token vocabulary
SETUP = (f"4 arms from the baseline regime's student, steps and learning rate: Rethinking OPD's top-K "
         f"policy gradient (A(v) = w(v)(log q(v) - log p(v)), w = the student's probabilities "
         f"renormalised on the support, K = {K}) on three supports, 'student_topk', 'teacher_topk' and "
         f"'union_topk', and 'sg_topk' (Many Faces' stop-gradient reverse KL on the student's top-{K}). "
         f"Metrics: sampled pass@1 (decisive); the tail masses and the top-{K} overlap with the teacher "
         f"(measures tail_mass:{K}, overlap:{K}).")
RULE = ("Part 'teacher over student': 'teacher_topk' > 'student_topk' on pass@1 at the last evaluation "
        "by more than 2 pooled standard errors over seeds. Part 'teacher vs sg': 'teacher_topk' is not "
        "below 'sg_topk' on pass@1 by more than 2 pooled standard errors (non-inferiority). Reproduced if "
        "both hold; not reproduced if either is reversed by that margin; inconclusive otherwise (and with "
        "fewer than 3 seeds). 'union_topk' is reported beside the verdict.")
FIGURE = ("pass@1", "greedy_pass@1", "tail_mass/student_topk", "overlap/ratio", "reverse_kl")


def schedule(mode: str):
    return S.schedule(mode, measures=(f"tail_mass:{K}", f"overlap:{K}"))


def arms(mode: str):
    out = [BL.arm(f"{s}_topk", O.TopKOPDConfig(k=K, support=s), mode) for s in ("student", "teacher", "union")]
    return out + [BL.arm("sg_topk", O.SGTopKConfig(k=K, variant="sg"), mode)]


def verdict(results, mode):
    parts = [V.better(results, "pass@1", "teacher_topk", "student_topk", name="teacher over student"),
             V.not_worse(results, "pass@1", "teacher_topk", "sg_topk", name="teacher vs sg")]
    notes = {"union_topk vs student_topk": V.describe(V.better(results, "pass@1", "union_topk", "student_topk"))}
    return V.combine(parts, RULE, notes)
