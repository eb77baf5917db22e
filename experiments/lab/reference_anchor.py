"""StableOPD (Luo et al., arXiv 2604.08527) in the lab: sampled-token OPD anchored to the
student's initial weights by a KL penalty, against OPD alone.

    python -m opd_jax.lab.reproduce reference_anchor [--mode smoke|quick|full]

Hardware and wall time (quick: 4 arms x 3 seeds x the baseline's steps): 20 min on 2 AMD EPYC
CPU cores (2026-12-06).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/reference_anchor/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "Demystifying OPD: Length Inflation and Stabilization Strategies for Large Language Models (StableOPD)"
ARXIV = "2604.08527"
CLAIM = ("Adding a reference-based divergence constraint (a KL penalty to the initial student) to OPD "
         "stabilises training and improves the student over plain OPD (7.2% on average, with rollout mixture "
         "distillation beside it).")
SETUP = ("3 arms from the baseline regime's student, steps and learning rate, on the student's samples, all "
         "Tinker's sampled-token OPD (importance-sampling surrogate): 'opd' (O.OPDConfig), 'anchor' "
         "(O.StableOPDConfig: plus 0.01 x the k2 estimate of KL(student || initial student) per token, whose "
         "gradient is that KL's; the kiln reimplementation's coefficient) and 'anchor_0.1' (coefficient 0.1). "
         "Added after those runs, beside them: 'anchor_mixture' (the anchor plus the paper's rollout mixture "
         "as the loop's loop.golden_fraction=0.1: each prompt's last sample replaced, with probability 0.1, "
         "by its record's reference solution, its behaviour log-prob the student's own). "
         "Not tested: the paper's mechanism (the lab's "
         "completions are short and always finish, so there is no length inflation to prevent: the "
         "'finished' fraction is reported). Metric: sampled pass@1 on held-out problems at the last "
         "evaluation; greedy pass@1, pass@8, entropy, reverse KL to the teacher and the finished fraction "
         "reported, and the anchor's mean KL (stable_opd/ref_kl) in the training metrics.")
RULE = ("Part 'beats OPD': anchor's pass@1 at the last evaluation exceeds opd's by more than 2 pooled standard "
        "errors over seeds. Reproduced if it holds; not reproduced if reversed by that margin; inconclusive "
        "otherwise (and with fewer than 3 seeds). anchor_0.1 is reported beside it, not part of the verdict.")
FIGURE = ("pass@1", "greedy_pass@1", "reverse_kl", "entropy")


def schedule(mode: str):
    return S.schedule(mode)


def arms(mode: str):
    return [BL.arm("opd", O.OPDConfig(), mode),
            BL.arm("anchor", O.StableOPDConfig(ref_coef=0.01), mode),
            BL.arm("anchor_0.1", O.StableOPDConfig(ref_coef=0.1), mode),
            BL.arm("anchor_mixture", O.StableOPDConfig(ref_coef=0.01), mode,
                   overrides=("loop.golden_fraction=0.1",))]


def verdict(results, mode):
    anchored = ("anchor", "anchor_0.1", "anchor_mixture")
    notes = {f"{a}_ref_kl": V.train_mean(results, a, "stable_opd/ref_kl") for a in anchored}
    notes.update({f"{a}_pass@1": V.stats(V.final(results, "pass@1", a)) for a in anchored[1:]})
    notes["anchor_mixture_golden_frac"] = V.train_mean(results, "anchor_mixture", "sample/golden_frac")
    notes["finished"] = {a: V.stats(V.final(results, "finished", a)) for a in ("opd", *anchored)}
    return V.combine([V.better(results, "pass@1", "anchor", "opd", name="beats OPD")], RULE, notes)
