"""The levers of the lab's baseline regime, one at a time (issue "The lab, part 2"): from the
regime's arm (the weak student, the exact reverse KL, lr 3e-4, 16 prompts x 4 samples), change
one thing per arm: the objective (the sampled-token estimator), the learning rate, the batch, an
off-policy cold start, and a teacher that also covers student-like states.

    python -m opd_jax.lab.reproduce baseline_levers [--mode smoke|quick|full]

Needs the lab model ``teacher_coverage`` (``python -m opd_jax.lab.zoo build teacher_coverage``:
the shipped teacher fine-tuned on its data plus one coverage record per problem,
``opd_jax.lab.coverage``). Hardware and wall time (quick: 7 arms x 3 seeds x 100 steps from the
weak start): 39 min on 2 CPU cores (2026-12-04); full runs the same arms from both starts.
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/baseline_levers/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import runner as R
from opd_jax.lab import setups
from opd_jax.lab import verdicts as V

PAPER = ("The levers of OPD: GKD (Agarwal et al.), Rethinking OPD (Li et al., 2604.13016), "
         "The Many Faces of OPD (Zhu et al., 2605.11182)")
ARXIV = "2306.13649"
CLAIM = ("Around a working OPD regime, the levers the papers name each move the result: the exact "
         "full-vocabulary reverse KL beats the sampled-token estimator, an off-policy cold start on the "
         "teacher's rollouts helps, and a teacher informed in student-like states helps.")
STEPS = {"smoke": None, "quick": 100, "full": 200}  # None: the smoke budget's steps
STARTS = {"smoke": ("weak",), "quick": ("weak",), "full": ("weak", "strong")}
LRS = (1e-4, 1e-3)
SETUP = ("From each student start (quick: the shipped weak student; full: weak and strong), one arm "
         "per lever, all else the baseline regime's arm 'opd' (BL.OPD, the exact reverse KL, on the "
         "student's samples; lr 3e-4; 16 prompts x 4 samples; the shipped teacher; quick: 100 steps): "
         "'sampled' (Tinker's sampled-token reverse KL, O.OPDConfig), 'lr0.0001' and 'lr0.001', 'batch32' "
         "(32 prompts x 4 samples: twice the samples per step), 'cold_start' (the first quarter of the "
         "steps supervised on the teacher's rollouts, then OPD) and 'coverage' (the teacher fine-tuned "
         "on its data plus coverage records: teacher_coverage). Metric: sampled pass@1 on held-out "
         "problems at the last evaluation; greedy pass@1, pass@8, entropy and reverse KL to the "
         "shipped teacher reported.")
RULE = ("For each start, three parts on pass@1 at the last evaluation, each against that start's 'opd' "
        "arm by more than 2 pooled standard errors over seeds: 'exact vs sampled' (opd > sampled), "
        "'cold start' (cold_start > opd), 'coverage' (coverage > opd). Reproduced if every part holds; "
        "not reproduced if any is reversed by that margin; inconclusive otherwise (and with fewer than "
        "3 seeds). The learning-rate and batch arms are measured and reported against 'opd', not "
        "decisive (the papers make no claim about them).")
FIGURE = ("pass@1", "greedy_pass@1", "reverse_kl", "entropy")


def _name(start: str, mode: str, arm: str) -> str:
    return arm if len(STARTS[mode]) == 1 else f"{start}_{arm}"


def arms(mode: str):
    steps = STEPS[mode] or BL.budget(mode).steps
    cold = max(1, steps // 4)
    out = []
    for s in STARTS[mode]:
        n = lambda arm: _name(s, mode, arm)  # noqa: E731
        base = dict(student=s, steps=steps)
        out += [BL.arm(n("opd"), BL.OPD, mode, **base),
                BL.arm(n("sampled"), O.OPDConfig(), mode, **base)]
        out += [BL.arm(n(f"lr{lr:g}"), BL.OPD, mode, lr=lr, **base) for lr in LRS]
        out += [BL.arm(n("batch32"), BL.OPD, mode, prompts=2 * BL.budget(mode).prompts, **base),
                BL.arm(n("cold_start"), BL.OPD, mode, overrides=(f"loop.cold_start_steps={cold}",), **base),
                BL.arm(n("coverage"), BL.OPD, mode, teacher="teacher_coverage", **base)]
    return out


def schedule(mode: str):
    return setups.schedule(mode, every=25) if mode == "quick" else setups.schedule(mode)


def verdict(results, mode):
    parts, notes = [], {}
    for s in STARTS[mode]:
        n = lambda arm: _name(s, mode, arm)  # noqa: E731
        parts += [V.better(results, "pass@1", n("opd"), n("sampled"), name=n("exact vs sampled")),
                  V.better(results, "pass@1", n("cold_start"), n("opd"), name=n("cold start")),
                  V.better(results, "pass@1", n("coverage"), n("opd"), name=n("coverage"))]
        for arm in [f"lr{lr:g}" for lr in LRS] + ["batch32"]:
            notes[f"{n(arm)} vs {n('opd')}"] = V.describe(V.better(results, "pass@1", n(arm), n("opd")))
    notes["greedy_pass@1 at the end"] = {a: round(R.mean_std(v)[0], 4) for a, v in
                                          R.values(results, "greedy_pass@1").items()}
    return V.combine(parts, RULE, notes)
