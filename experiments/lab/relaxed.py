"""REOPOLD (Ko et al., arXiv 2603.11137) in the lab: do reward clipping, entropy-guided token
selection and the exploration-to-refinement schedule make OPD more sample-efficient and stable?

    python -m opd_jax.lab.reproduce relaxed [--mode smoke|quick|full]

Hardware and wall time (quick: 5 arms x 5 seeds x the baseline's steps, evaluated twice as often
as the baseline's schedule): 49 min on 2 AMD EPYC CPU cores (2026-12-04).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/relaxed/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "REOPOLD: Relaxed On-Policy Distillation (Ko et al.)"
ARXIV = "2603.11137"
CLAIM = ("Reward clipping, entropy-guided token selection and an exploration-to-refinement schedule "
         "make OPD more sample-efficient (fewer steps to a given accuracy) and more stable across seeds.")
SETUP = ("5 arms from the baseline regime's student, steps and learning rate: 'opd' (Tinker's "
         "sampled-token OPD), and REOPOLD's reconstruction with its pieces added one by one: 'clip' "
         "(rewards floored at log(lambda / (1 - lambda)), lambda 0.2), 'entropy' (only the top 50% of "
         "tokens by the student's entropy), 'clip_entropy' (both), 'reopold' (both, and before half the "
         "steps the exploration stage: tokens whose reward is below the floor dropped). 5 seeds in quick "
         "and full (the claim is about the spread); evaluations twice as often as the baseline's. "
         "Metrics: the steps to reach a target pass@1 (the first evaluation at or above it; a run that "
         "never reaches it counts as its last step plus one evaluation interval), the final pass@1 and "
         "its standard deviation across seeds.")
RULE = ("The target is the pass@1 before training plus half the 'opd' arm's mean gain at its last "
        "evaluation (undefined if that gain is not positive: then every part is unresolved). Part "
        "'sample efficiency': 'reopold' needs fewer steps than 'opd' to reach the target, by more than 2 "
        "pooled standard errors over seeds. Part 'no loss': 'reopold''s final pass@1 is not below "
        "'opd''s by more than 2 pooled standard errors. Reproduced if both hold; not reproduced if "
        "either is reversed by that margin; inconclusive otherwise (and with fewer than 3 seeds). Each "
        "piece's steps to the target and every arm's spread across seeds are reported beside the "
        "verdict, not decisive (a spread of 5 seeds has no useful standard error).")
FIGURE = ("pass@1", "greedy_pass@1", "pass@k", "entropy")
PIECES = ("clip", "entropy", "clip_entropy", "reopold")


def seeds(mode: str):
    return S.seeds(mode, at_least=5)


def schedule(mode: str):
    return S.schedule(mode, every=max(1, BL.budget(mode).schedule.every // 2))


def arms(mode: str):
    steps = BL.budget(mode).steps
    configs = {"clip": O.REOPOLDConfig(clip=True, entropy_select=False),
               "entropy": O.REOPOLDConfig(clip=False, entropy_select=True),
               "clip_entropy": O.REOPOLDConfig(clip=True, entropy_select=True),
               "reopold": O.REOPOLDConfig(clip=True, entropy_select=True, switch_step=max(1, steps // 2))}
    return [BL.arm("opd", O.OPDConfig(), mode)] + [BL.arm(n, configs[n], mode) for n in PIECES]


def verdict(results, mode):
    faster, notes = V.faster_to_half_gain(results, "reopold", "opd", name="sample efficiency",
                                          also=tuple(a for a in PIECES if a != "reopold"))
    notes["std_across_seeds"] = {a: V.stats(V.final(results, "pass@1", a))["std"] for a in ("opd",) + PIECES}
    if "target" not in notes:  # no gain to measure either part against
        return V.combine([faster, V.unresolved("no loss", "reopold not worse than opd on pass@1", "pass@1",
                                               "the opd arm did not improve: no target")], RULE, notes)
    return V.combine([faster, V.not_worse(results, "pass@1", "reopold", "opd", name="no loss")], RULE, notes)
