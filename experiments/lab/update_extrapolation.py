"""EffOPD (Cai et al., arXiv 2605.11739) in the lab: OPD's parameters pushed further along their
recent update direction, by a step that grows with how steady that direction has been, to reach
OPD's accuracy in fewer steps.

    python -m opd_jax.lab.reproduce update_extrapolation [--mode smoke|quick|full]

Hardware and wall time (quick: 4 arms x 3 seeds x the baseline's steps): 33 min for the first 3
arms on 2 AMD EPYC CPU cores (2026-12-06), 10 more for the secant arm.
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/update_extrapolation/<mode>/`` holds the results.
"""

from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "Learning to Foresee: Unveiling the Unlocking Efficiency of On-Policy Distillation (EffOPD, Cai et al.)"
ARXIV = "2605.11739"
CLAIM = ("Extrapolating the parameters along OPD's current update direction, with an adaptively chosen step, "
         "trains about 3x faster than OPD while keeping comparable final performance.")
EVERY = 10  # optimizer steps per window
SCALE = 2.0  # the largest jump, in windows' displacements
SETUP = ("3 arms from the baseline regime's student, objective (the exact per-prefix reverse KL), steps and "
         "learning rate: 'opd' (AdamW alone); 'effopd' (the same, then opd_jax.training.extrapolation: every "
         f"{EVERY} steps the parameters jump eta times that window's displacement, eta = {SCALE} x max(0, "
         "cosine between this window's displacement and the last one's): optim.extrapolate_every / "
         "optim.extrapolate_scale); 'lr_x2' (OPD at twice the learning rate: whether extrapolation does more "
         "than a longer step). The extrapolation rule, window and scale are this reproduction's reading of "
         "the abstract (the paper's rule is not in the sources). Added after the first three arms' results "
         "(the cosine jumps destabilised training): 'effopd_secant', a second reading of the adaptive step "
         "(optim.extrapolate_rule=secant: eta from a line search along the window's displacement, the "
         "slopes of its first and last gradients; no jump unless the loss still falls and flattens), same "
         "window and largest jump. Evaluated every third of the regime's "
         "interval. Metrics: the steps each run takes to reach the start's sampled pass@1 plus half the "
         "'opd' arm's mean gain (a run that never does counts one interval past the end), and sampled pass@1 "
         "on held-out problems at the last evaluation; the mean jump (opt/extrapolation_scale) reported.")
RULE = ("Part 'faster': effopd takes fewer steps than opd to the target above, by more than 2 pooled standard "
        "errors over seeds. Part 'comparable final performance': effopd's pass@1 at the last evaluation is not "
        "below opd's by more than 2 pooled standard errors (non-inferiority). Reproduced if both hold; not "
        "reproduced if either is reversed by that margin; inconclusive otherwise (and with fewer than 3 "
        "seeds). The lr_x2 arm is reported beside them, not part of the verdict. The secant arm, added after "
        "the first run, gets the same two parts in the notes ('secant_reading'), not in the verdict.")
FIGURE = ("pass@1", "greedy_pass@1", "reverse_kl", "entropy")


def schedule(mode: str):
    return S.schedule(mode, every=max(1, BL.budget(mode).schedule.every // 3))


def arms(mode: str):
    every = min(EVERY, max(1, BL.budget(mode).steps // 2))  # smoke's 2 steps: windows of 1
    return [BL.arm("opd", BL.OPD, mode),
            BL.arm("effopd", BL.OPD, mode, overrides=(f"optim.extrapolate_every={every}",
                                                       f"optim.extrapolate_scale={SCALE}")),
            BL.arm("lr_x2", BL.OPD, mode, lr=2 * BL.budget(mode).lr),
            BL.arm("effopd_secant", BL.OPD, mode, overrides=(f"optim.extrapolate_every={max(every, 2)}",
                                                              f"optim.extrapolate_scale={SCALE}",
                                                              "optim.extrapolate_rule=secant"))]


def verdict(results, mode):
    faster, notes = V.faster_to_half_gain(results, "effopd", "opd", name="faster",
                                          also=("lr_x2", "effopd_secant"))
    notes.update(mean_jump=V.train_mean(results, "effopd", "opt/extrapolation_scale"),
                 lr_x2_final=V.stats(V.final(results, "pass@1", "lr_x2")))
    secant, _ = V.faster_to_half_gain(results, "effopd_secant", "opd", name="faster (secant)")
    notes["secant_reading"] = {
        "parts": [secant, V.not_worse(results, "pass@1", "effopd_secant", "opd", name="comparable (secant)")],
        "mean_jump": V.train_mean(results, "effopd_secant", "opt/extrapolation_scale")}
    comparable = V.not_worse(results, "pass@1", "effopd", "opd", name="comparable final performance")
    return V.combine([faster, comparable], RULE, notes)
