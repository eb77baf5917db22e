"""The lab's baseline regime: does on-policy distillation improve the lab's weak and strong
students, and does it beat the same-budget off-policy control? Every other lab experiment
stands on this one (issue "The lab, part 2").

    python -m opd_jax.lab.reproduce baseline_regime [--mode smoke|quick|full]

Hardware and wall time (quick: 6 arms x 3 seeds x 100 steps): 38 min on 2 CPU cores (2026-12-03).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/baseline_regime/<mode>/`` holds the
results.
"""

import math

from opd_jax.lab import baseline as BL
from opd_jax.lab import runner as R
from opd_jax.lab import setups
from opd_jax.lab import verdicts as V

PAPER = "The lab's baseline regime (GKD, Agarwal et al.; On-Policy Distillation, Lu et al.)"
ARXIV = "2306.13649"
CLAIM = ("Given a teacher clearly stronger than the student, on-policy distillation raises the student's "
         "held-out pass@1 clearly, from a weak and from a strong start, and beats sequence-level KD "
         "(supervised training on teacher samples) at the same budget.")
STARTS = ("weak", "strong")
STEPS = {"smoke": None, "quick": 100, "full": None}  # None: the baseline budget's steps
SETUP = ("Per student start (the shipped 'weak' and 'strong' 2 x 128 students: one constant-learning-rate "
         "supervised run stopped after 900 and 1,800 steps; the shipped 4 x 256 teacher): 'opd' (the "
         "regime's objective BL.OPD, GKD's exact full-vocabulary reverse KL, on the student's samples), "
         "'seqkd' (BL.CONTROL on the teacher's samples of the same prompts: sequence-level KD, the "
         "off-policy control) and 'sft_data' (BL.CONTROL on the data's own solutions, reported). Same "
         "learning rate, prompts x samples per step and steps for all (quick: 100 steps; the regime's "
         "budget otherwise). Metric: sampled pass@1 on held-out problems at the last evaluation.")
RULE = ("For each start, two parts on pass@1: 'gain' (the OPD arm's mean at the end exceeds its mean "
        "before training by more than twice the standard deviation of its final values over seeds) and "
        "'vs control' (opd > seqkd by more than 2 pooled standard errors). Reproduced if all four parts "
        "hold; not reproduced if any is reversed by that margin; inconclusive otherwise (and with fewer "
        "than 3 seeds). opd vs sft_data is reported beside the verdict, not decisive.")
FIGURE = ("pass@1", "greedy_pass@1", "reverse_kl")


def arms(mode: str):
    steps = {"steps": STEPS[mode]} if STEPS[mode] else {}
    out = []
    for s in STARTS:
        out += [BL.arm(f"{s}_opd", BL.OPD, mode, student=s, **steps),
                BL.arm(f"{s}_seqkd", BL.CONTROL, mode, student=s, source="teacher", **steps),
                BL.arm(f"{s}_sft_data", BL.CONTROL, mode, student=s, source="data", **steps)]
    return out


def schedule(mode: str):
    return setups.schedule(mode, every=25) if mode == "quick" else setups.schedule(mode)


def gain(results, arm: str, metric: str = "pass@1") -> dict:
    """Part: ``arm`` ends above its start by more than twice its final values' seed spread."""
    end, begin = V.final(results, metric, arm), V.start(results, metric, arm)
    sa, sb = V.stats(end), V.stats(begin)
    diff, spread = sa["mean"] - sb["mean"], sa["std"]
    if sa["n"] < V.MIN_SEEDS or not all(math.isfinite(x) for x in (diff, spread)):
        outcome = "unresolved"
    else:
        outcome = "holds" if diff > 2 * spread else "reversed" if diff < -2 * spread else "unresolved"
    return {"name": f"{arm} gain (2 x seed SD)", "claim": f"{arm} rises on {metric}", "metric": metric,
            "kind": "better", "a": {"label": f"{arm} at the end", **sa},
            "b": {"label": f"{arm} at step 0", **sb}, "difference": diff, "pooled_se": spread,
            "factor": 2.0, "outcome": outcome}


def verdict(results, mode):
    parts = []
    for s in STARTS:
        parts += [gain(results, f"{s}_opd"), V.better(results, "pass@1", f"{s}_opd", f"{s}_seqkd")]
    notes = {f"{s}_opd vs {s}_sft_data": V.describe(V.better(results, "pass@1", f"{s}_opd", f"{s}_sft_data"))
             for s in STARTS}
    notes["greedy_pass@1 at the end"] = {a: round(R.mean_std(v)[0], 4) for a, v in
                                          R.values(results, "greedy_pass@1").items()}
    return V.combine(parts, RULE, notes)
