"""TRB (Trust-Region behavior Blending, Plyusov et al., arXiv 2605.31159) in the lab: during a
warm-up, the student's rollouts are drawn from the blend of its logits with the teacher's that is
closest to the teacher within a KL trust region around the student, the budget annealed to zero;
the per-prefix reverse-KL loss is unchanged.

    python -m opd_jax.lab.reproduce trust_region_blend [--mode smoke|quick|full]

Hardware and wall time (quick: 4 arms x 3 seeds x the baseline's steps): 23 min on 2 AMD EPYC
CPU cores (2026-12-06).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/trust_region_blend/<mode>/`` holds the results.
"""

from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "Trust-Region Behavior Blending for On-Policy Distillation (Plyusov et al.)"
ARXIV = "2605.31159"
CLAIM = ("Replacing the student's early rollouts with the closest-to-teacher behaviour policy inside a "
         "student-centred KL trust region, annealed to zero after a warm-up, gives a better student than "
         "vanilla OPD and than the other ways of injecting the teacher into the rollouts (a fixed budget, "
         "teacher tokens).")
BUDGET = 0.05  # nats of KL(mu || student) per token; at step 0 it gives beta ~0.8 (weak start, lab teacher)
COIN = 0.5  # chance of a teacher token in the token-injection arm, annealed like TRB's budget
SETUP = ("4 arms from the baseline regime's student, objective (the exact per-prefix reverse KL), steps "
         "and learning rate, differing only in how the rollouts are drawn: 'opd' (the student alone); "
         f"'trb' (sampler.teacher_blend=geometric: each token from the blend (1 - beta) z_student + beta "
         f"z_teacher with the largest beta whose KL from the student is at most {BUDGET} nats, the budget "
         "decaying linearly to 0 over the first quarter of the steps, loop.teacher_mix_steps); "
         f"'fixed_blend' (the same blend with the budget held at {BUDGET} for every step); 'coin' (each "
         f"token the teacher's with probability {COIN}, annealed over the same warm-up: MiniLLM-style "
         "token injection, standing in for the paper's SKD baseline). The budget, the linear anneal and "
         "the warm-up length are this reproduction's choices (the paper's are not in the sources). "
         "Metric: sampled pass@1 on held-out problems at the last evaluation; greedy pass@1, pass@8, "
         "entropy and reverse KL to the teacher reported, and the blend's mean beta in the training "
         "metrics (sample/teacher_weight).")
RULE = ("Three parts on pass@1 at the last evaluation, each by more than 2 pooled standard errors over "
        "seeds: 'beats OPD' (trb > opd), 'beats a fixed budget' (trb > fixed_blend), 'beats token "
        "injection' (trb > coin). Reproduced if all three hold; not reproduced if any is reversed by that "
        "margin; inconclusive otherwise (and with fewer than 3 seeds).")
FIGURE = ("pass@1", "greedy_pass@1", "reverse_kl", "entropy")


def schedule(mode: str):
    return S.schedule(mode)


def arms(mode: str):
    warmup = max(1, BL.budget(mode).steps // 4)
    blend = ("sampler.teacher_blend=geometric", f"loop.teacher_mix={BUDGET}")
    return [BL.arm("opd", BL.OPD, mode),
            BL.arm("trb", BL.OPD, mode, overrides=blend + (f"loop.teacher_mix_steps={warmup}",)),
            BL.arm("fixed_blend", BL.OPD, mode, overrides=blend),
            BL.arm("coin", BL.OPD, mode, overrides=(f"loop.teacher_mix={COIN}",
                                                   f"loop.teacher_mix_steps={warmup}"))]


def verdict(results, mode):
    parts = [V.better(results, "pass@1", "trb", "opd", name="beats OPD"),
             V.better(results, "pass@1", "trb", "fixed_blend", name="beats a fixed budget"),
             V.better(results, "pass@1", "trb", "coin", name="beats token injection")]
    return V.combine(parts, RULE)
