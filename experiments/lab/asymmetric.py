"""AOPD (Jia et al., arXiv 2605.06387) in the lab: policy gradient on positive-advantage tokens
and a local divergence elsewhere, against plain sampled-token OPD, from a weak and a strong
student.

    python -m opd_jax.lab.reproduce asymmetric [--mode smoke|quick|full]

Hardware and wall time (quick: 4 arms x 5 seeds x the baseline's steps): 21 min on 2 AMD EPYC CPU
cores (2026-12-04). The set-up, the arms per mode, the metrics and the verdict rule (written before
any run) are the constants and functions below; ``experiments/lab/results/asymmetric/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "AOPD: Asymmetric On-Policy Distillation (Jia et al.)"
ARXIV = "2605.06387"
CLAIM = ("Policy gradient on positive-advantage tokens plus a local divergence on the others beats "
         "plain OPD, and more so from a weak start than from a strong one.")
SETUP = ("4 arms, the baseline regime's steps and learning rate: 'opd_<start>' = sampled-token OPD "
         "(Tinker's advantage, importance-sampling loss) and 'aopd_<start>' = AOPD's reconstruction "
         "(the same policy gradient where A_t > 0, the full-vocabulary reverse KL with weight 1 where "
         "A_t <= 0), each from the 'weak' and the 'strong' student. 5 seeds in quick and full: the weak "
         "start's spread is large. Metrics: sampled pass@1 (decisive), pass@k and the entropy.")
RULE = ("Parts 'weak' and 'strong': aopd > opd on pass@1 at the last evaluation from that start. Part "
        "'more so from weak': per seed, (aopd_weak - opd_weak) exceeds (aopd_strong - opd_strong) on "
        "pass@1. Each by more than 2 pooled standard errors over seeds. Reproduced if all three hold; "
        "not reproduced if any is reversed by that margin; inconclusive otherwise (and with fewer than "
        "3 seeds).")
FIGURE = ("pass@1", "pass@k", "entropy", "greedy_pass@1")
STARTS = ("weak", "strong")


def seeds(mode: str):
    return S.seeds(mode, at_least=5)


def arms(mode: str):
    return [BL.arm(f"{name}_{start}", obj, mode, student=start) for start in STARTS
            for name, obj in (("opd", O.OPDConfig()), ("aopd", O.AOPDConfig()))]


def verdict(results, mode):
    parts = [V.better(results, "pass@1", f"aopd_{s}", f"opd_{s}", name=s) for s in STARTS]
    gain = {s: V.per_seed(results, "pass@1", [f"aopd_{s}", f"opd_{s}"], lambda a, o: a - o) for s in STARTS}
    parts.append(V.compare("more so from weak", gain["weak"], gain["strong"], a_label="gain from weak",
                           b_label="gain from strong", metric="pass@1"))
    return V.combine(parts, RULE)
