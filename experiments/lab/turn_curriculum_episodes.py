"""TCOD (arXiv 2604.24005) in the lab on real multi-turn episodes: the student answers, the lab's
environment says "no:" after a wrong answer, and the student answers again. On-policy distillation
on a curriculum over the episodes' turns (the first answer first, then both), against OPD on whole
episodes. ``turn_curriculum`` tried the claim with an answer's arithmetic steps as its turns.

    python -m opd_jax.lab.reproduce turn_curriculum_episodes [--mode smoke|quick|full]

Hardware and wall time (quick: 4 arms x 3 seeds x the baseline's steps): see the experiments
README's table (2 AMD EPYC CPU cores).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/turn_curriculum_episodes/<mode>/`` holds
the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V
from opd_jax.lab.tokenizer import EOS_ID

PAPER = "TCOD: trajectory-depth curriculum for on-policy distillation of multi-turn agents"
ARXIV = "2604.24005"
CLAIM = ("A curriculum on trajectory depth (the distillation loss on the first turns first, the depth growing "
         "to the full episode; or from the last turns back) improves on-policy distillation over distilling "
         "whole trajectories from the start.")
EPISODES = ("loop.turns=2", "environment=opd_jax.lab.data:retry_environment")
SETUP = ("4 arms with the baseline regime's steps and learning rate, on the student's samples, all Tinker's "
         "sampled-token OPD (importance-sampling surrogate), from the weak start fine-tuned on retry records "
         "('weak_retry': a wrong answer, EOS, the environment's 'no:', then a solution) and taught by the "
         "teacher fine-tuned the same way ('teacher_retry'). Each training sample is an episode of up to 2 "
         "answers: the lab's retry environment says 'no:' after an answer the verifier rejects (loop.turns=2, "
         "environment=opd_jax.lab.data:retry_environment); the teacher scores the whole episode, the loss "
         "counts the student's tokens. 'opd' (O.OPDConfig, whole episodes); TCOD (O.TCODConfig, separators = "
         "EOS, so each answer is a turn; the loss on the first d_k answers, d_k growing from 1 at step 0 to "
         "the whole episode at step 100 of 200): 'tcod' (forward, first answers first) and 'tcod_backward' "
         "(the last answers first); 'opd_single' (OPD on single answers, no episodes in training). Metric: "
         "sampled pass@1 of held-out episodes (up to 2 answers, the retry environment between them; an "
         "episode is right when its last answer is) at the last evaluation; the mean answers per episode "
         "(turns), greedy pass@1, pass@8, entropy and reverse KL to teacher_retry reported, and the kept "
         "fraction of tokens (tcod/kept_frac).")
RULE = ("Part 'beats OPD': tcod's episode pass@1 at the last evaluation exceeds opd's by more than 2 pooled "
        "standard errors over seeds. Reproduced if it holds; not reproduced if reversed by that margin; "
        "inconclusive otherwise (and with fewer than 3 seeds). tcod_backward and opd_single are reported "
        "beside it, not part of the verdict.")
FIGURE = ("pass@1", "turns", "greedy_pass@1", "reverse_kl")


def schedule(mode: str):
    return S.schedule(mode, turns=2, reference="teacher_retry")


def arms(mode: str):
    grow = max(1, BL.budget(mode).steps // 2)
    common = dict(student="weak_retry", teacher="teacher_retry")
    return [BL.arm("opd", O.OPDConfig(), mode, overrides=EPISODES, **common),
            BL.arm("tcod", O.TCODConfig(separators=(EOS_ID,), grow_steps=grow), mode, overrides=EPISODES,
                   **common),
            BL.arm("tcod_backward", O.TCODConfig(separators=(EOS_ID,), direction="backward", grow_steps=grow),
                   mode, overrides=EPISODES, **common),
            BL.arm("opd_single", O.OPDConfig(), mode, **common)]


def verdict(results, mode):
    notes = {f"{a}_kept_frac": V.train_mean(results, a, "tcod/kept_frac") for a in ("tcod", "tcod_backward")}
    for a in ("tcod_backward", "opd_single"):
        notes[f"{a}_pass@1"] = V.stats(V.final(results, "pass@1", a))
    for a in ("opd", "tcod", "tcod_backward", "opd_single"):
        notes[f"{a}_turns"] = V.stats(V.final(results, "turns", a))
    return V.combine([V.better(results, "pass@1", "tcod", "opd", name="beats OPD")], RULE, notes)
