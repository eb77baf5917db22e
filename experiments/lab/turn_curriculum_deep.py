"""TCOD (arXiv 2604.24005) in the lab on deeper multi-turn episodes: up to three answers, the lab's
retry environment saying "no:" after each wrong one. ``turn_curriculum_episodes`` had two answers,
the shallowest depth a curriculum can order; here the curriculum has three stages (the first
answer, then the first two, then all three).

    python -m opd_jax.lab.reproduce turn_curriculum_deep [--mode smoke|quick|full]

Hardware and wall time (quick: 2 arms x 3 seeds x the baseline's steps): see the experiments
README's table (2 AMD EPYC CPU cores).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/turn_curriculum_deep/<mode>/`` holds the
results.
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
EPISODES = ("loop.turns=3", "environment=opd_jax.lab.data:retry_environment")
SETUP = ("2 arms with the baseline regime's steps and learning rate, on the student's samples, Tinker's "
         "sampled-token OPD, from 'weak_retry' taught by 'teacher_retry' (as in turn_curriculum_episodes), "
         "on episodes of up to 3 answers: the lab's retry environment says 'no:' after each answer the "
         "verifier rejects (loop.turns=3). 'opd' (O.OPDConfig, whole episodes) and 'tcod' (O.TCODConfig, "
         "separators = EOS, forward: the loss on the first d_k answers, d_k growing from 1 at step 0 to the "
         "whole episode at step 100 of 200). Metric: sampled pass@1 of held-out episodes of up to 3 answers "
         "(right when the last answer is) at the last evaluation; turns, turn1_pass@1, greedy pass@1 and "
         "reverse KL to teacher_retry reported, and the kept fraction of tokens (tcod/kept_frac).")
RULE = ("Part 'beats OPD': tcod's episode pass@1 at the last evaluation exceeds opd's by more than 2 pooled "
        "standard errors over seeds. Reproduced if it holds; not reproduced if reversed by that margin; "
        "inconclusive otherwise (and with fewer than 3 seeds).")
FIGURE = ("pass@1", "turns", "turn1_pass@1", "reverse_kl")


def schedule(mode: str):
    return S.schedule(mode, turns=3, reference="teacher_retry")


def arms(mode: str):
    grow = max(1, BL.budget(mode).steps // 2)
    common = dict(student="weak_retry", teacher="teacher_retry", overrides=EPISODES)
    return [BL.arm("opd", O.OPDConfig(), mode, **common),
            BL.arm("tcod", O.TCODConfig(separators=(EOS_ID,), grow_steps=grow), mode, **common)]


def verdict(results, mode):
    notes = {"tcod_kept_frac": V.train_mean(results, "tcod", "tcod/kept_frac")}
    for a in ("opd", "tcod"):
        notes[f"{a}_turns"] = V.stats(V.final(results, "turns", a))
        notes[f"{a}_turn1_pass@1"] = V.stats(V.final(results, "turn1_pass@1", a))
    return V.combine([V.better(results, "pass@1", "tcod", "opd", name="beats OPD")], RULE, notes)
