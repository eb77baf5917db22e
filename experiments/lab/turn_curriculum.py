"""TCOD (arXiv 2604.24005) in the lab: on-policy distillation on a curriculum over trajectory depth,
the loss first on each answer's first step and growing to the whole answer, against OPD on whole
answers. The lab's answers are single turns; their arithmetic steps (space-separated) stand in
for an agent episode's turns.

    python -m opd_jax.lab.reproduce turn_curriculum [--mode smoke|quick|full]

Hardware and wall time (quick: 3 arms x 3 seeds x the baseline's steps): see the experiments
README's table (2 AMD EPYC CPU cores).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/turn_curriculum/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import tokenizer as T
from opd_jax.lab import verdicts as V

PAPER = "TCOD: trajectory-depth curriculum for on-policy distillation of multi-turn agents"
ARXIV = "2604.24005"
CLAIM = ("A curriculum on trajectory depth (the distillation loss on the first turns first, the depth growing "
         "to the full episode; or from the last turns back) improves on-policy distillation over distilling "
         "whole trajectories from the start.")
SPACE = len(T.SPECIALS) + T.CHARACTERS.index(" ")  # the lab's step separator: a "turn" ends there
SETUP = ("3 arms from the baseline regime's student, steps and learning rate, on the student's samples, all "
         "Tinker's sampled-token OPD (importance-sampling surrogate): 'opd' (O.OPDConfig, whole answers) and "
         "TCOD (O.TCODConfig, separators = the space token, so each arithmetic step of an answer is a turn; "
         "the loss on the first d_k steps, d_k growing linearly per answer from one step at step 0 to the "
         "whole answer at step 100 of 200, averaged over the kept tokens): 'tcod' (forward, first steps "
         "first) and 'tcod_backward' (the last steps first). The lab's answers have 1-3 steps, so this is "
         "a short curriculum on reasoning steps, not on an agent's turns. Metric: sampled pass@1 on "
         "held-out problems at the last evaluation; greedy pass@1, pass@8, entropy and reverse KL to the "
         "teacher reported, and the kept fraction of tokens (tcod/kept_frac) in the training metrics.")
RULE = ("Part 'beats OPD': tcod's pass@1 at the last evaluation exceeds opd's by more than 2 pooled standard "
        "errors over seeds. Reproduced if it holds; not reproduced if reversed by that margin; inconclusive "
        "otherwise (and with fewer than 3 seeds). tcod_backward is reported beside it, not part of the verdict.")
FIGURE = ("pass@1", "greedy_pass@1", "reverse_kl", "entropy")


def schedule(mode: str):
    return S.schedule(mode)


def arms(mode: str):
    grow = max(1, BL.budget(mode).steps // 2)
    return [BL.arm("opd", O.OPDConfig(), mode),
            BL.arm("tcod", O.TCODConfig(separators=(SPACE,), grow_steps=grow), mode),
            BL.arm("tcod_backward", O.TCODConfig(separators=(SPACE,), direction="backward", grow_steps=grow),
                   mode)]


def verdict(results, mode):
    notes = {f"{a}_kept_frac": V.train_mean(results, a, "tcod/kept_frac") for a in ("tcod", "tcod_backward")}
    notes["tcod_backward_pass@1"] = V.stats(V.final(results, "pass@1", "tcod_backward"))
    return V.combine([V.better(results, "pass@1", "tcod", "opd", name="beats OPD")], RULE, notes)
