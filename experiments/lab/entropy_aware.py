"""EOPD (Jin et al., arXiv 2603.07079) in the lab: does reverse-KL OPD collapse the student's
entropy where the teacher is uncertain, and does forward KL on those tokens keep it and raise
pass@k?

    python -m opd_jax.lab.reproduce entropy_aware [--mode smoke|quick|full]

Hardware and wall time (quick: 5 arms x 3 seeds x the baseline's steps): 50 min on 2 AMD EPYC
CPU cores (2026-12-04).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/entropy_aware/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "EOPD: Entropy-Aware On-Policy Distillation (Jin et al.)"
ARXIV = "2603.07079"
CLAIM = ("Reverse-KL OPD collapses the student's entropy where the teacher is uncertain; adding "
         "forward KL on the tokens where the teacher's entropy is high keeps it and raises pass@k.")
TAU = 0.8  # nats: the paper's threshold, and the one the measure uses for every arm
TAUS = (0.4, 0.8, 1.2)
SETUP = ("Arms from the baseline regime's student, steps and learning rate: 'opd' = EOPD's own "
         "reverse-KL part alone (PPO-clipped sampled-token OPD; EOPD with the forward-KL coefficient 0), "
         "'eopd_tau<T>' = EOPD with the forward KL over the teacher's top-16 where its entropy exceeds T "
         "nats, T in {0.4, 0.8, 1.2} (0.8: the paper's), and 'baseline' = the lab's baseline OPD "
         "objective, for reference. Measured on the evaluation's samples against the teacher "
         "(measure high_entropy:0.8): the student's entropy at positions where the teacher's exceeds "
         "0.8 nats, the shares of such positions; also distinct correct solutions and pass@k.")
RULE = ("Part 'collapse': the 'opd' arm's student entropy at high-teacher-entropy positions "
        "(high_entropy/student) at the last evaluation is below its value before training. Part 'keeps "
        "entropy': 'eopd_tau0.8' > 'opd' on high_entropy/student at the last evaluation. Part 'pass@k': "
        "'eopd_tau0.8' > 'opd' on pass@k (k = the evaluation's samples per problem) at the last "
        "evaluation. Each by more than 2 pooled standard errors over seeds. Reproduced if all three "
        "hold; not reproduced if any is reversed by that margin; inconclusive otherwise (and with "
        "fewer than 3 seeds). The other thresholds are reported, not decisive.")
FIGURE = ("high_entropy/student", "high_entropy/share_student", "entropy", "distinct_correct", "pass@1",
          "pass@k")


def schedule(mode: str):
    return S.schedule(mode, measures=(f"high_entropy:{TAU}",))


def arms(mode: str):
    out = [BL.arm("baseline", BL.OPD, mode), BL.arm("opd", O.EOPDConfig(fkl_coef=0.0), mode)]
    out += [BL.arm(f"eopd_tau{t:g}", O.EOPDConfig(tau=t), mode) for t in TAUS]
    return out


def verdict(results, mode):
    k = V.pass_k(results)
    parts = [V.changes(results, "high_entropy/student", "opd", up=False, name="collapse"),
             V.better(results, "high_entropy/student", "eopd_tau0.8", "opd", name="keeps entropy"),
             V.better(results, k, "eopd_tau0.8", "opd", name=k)]
    notes = {f"eopd_tau{t:g} vs opd": V.describe(V.better(results, k, f"eopd_tau{t:g}", "opd"))
             for t in TAUS if t != TAU}
    return V.combine(parts, RULE, notes)
