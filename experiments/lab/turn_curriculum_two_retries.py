"""TCOD (arXiv 2604.24005) in the lab on episodes of up to three answers, with models trained to
answer a second and a third time. ``turn_curriculum_deep`` ran three-answer episodes from models
fine-tuned on one retry only, and their third answers added little (0.217 against 0.211 pass@1
before training); here the student start and the teacher were fine-tuned on records with one and
with two wrong answers before the solution (``train_retry2.jsonl``: 'weak_retry2',
'teacher_retry2'), so that every answer of an episode is one the models were taught to give.

    python -m opd_jax.lab.reproduce turn_curriculum_two_retries [--mode smoke|quick|full]

Hardware and wall time (quick: 3 arms x 3 seeds x the baseline's steps): see the experiments
README's table (2 AMD EPYC CPU cores).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/turn_curriculum_two_retries/<mode>/``
holds the results.
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
TURNS = 3
EPISODES = (f"loop.turns={TURNS}", "environment=opd_jax.lab.data:retry_environment")
SETUP = ("3 arms with the baseline regime's steps and learning rate, on the student's samples, Tinker's "
         "sampled-token OPD, from 'weak_retry2' (the weak start fine-tuned on train_retry2.jsonl: every "
         "training record, plus per problem a record with one wrong answer and one with two, each followed by "
         "EOS and the environment's 'no:', then a solution) taught by 'teacher_retry2' (the teacher fine-tuned "
         "the same way), on episodes of up to 3 answers: the lab's retry environment says 'no:' after each "
         "answer the verifier rejects (loop.turns=3). 'opd' (O.OPDConfig, whole episodes); TCOD "
         "(O.TCODConfig, separators = EOS: each answer is a turn; d_k growing from 1 answer at step 0 to the "
         "whole episode at step 100 of 200): 'tcod' (forward, the first d_k answers) and 'tcod_backward' (the "
         "last d_k). Metric: sampled pass@1 of held-out episodes of up to 3 answers (right when the last "
         "answer is) at the last evaluation; turns, turn1_pass@1, greedy pass@1 and reverse KL to "
         "teacher_retry2 reported, the kept fraction of tokens (tcod/kept_frac), and each answer's reverse "
         "KL to the teacher over training (turns/k/reverse_kl, the mean log p - log q of its tokens).")
RULE = ("Part 'beats OPD': tcod's episode pass@1 at the last evaluation exceeds opd's by more than 2 pooled "
        "standard errors over seeds. Reproduced if it holds; not reproduced if reversed by that margin; "
        "inconclusive otherwise (and with fewer than 3 seeds). tcod_backward is reported beside it, not part "
        "of the verdict.")
FIGURE = ("pass@1", "turns", "turn1_pass@1", "reverse_kl")
ARMS = ("opd", "tcod", "tcod_backward")


def schedule(mode: str):
    return S.schedule(mode, turns=TURNS, reference="teacher_retry2")


def arms(mode: str):
    grow = max(1, BL.budget(mode).steps // 2)
    common = dict(student="weak_retry2", teacher="teacher_retry2", overrides=EPISODES)
    return [BL.arm("opd", O.OPDConfig(), mode, **common),
            BL.arm("tcod", O.TCODConfig(separators=(EOS_ID,), grow_steps=grow), mode, **common),
            BL.arm("tcod_backward", O.TCODConfig(separators=(EOS_ID,), direction="backward", grow_steps=grow),
                   mode, **common)]


def verdict(results, mode):
    notes = {f"{a}_kept_frac": V.train_mean(results, a, "tcod/kept_frac") for a in ("tcod", "tcod_backward")}
    notes["tcod_backward_pass@1"] = V.stats(V.final(results, "pass@1", "tcod_backward"))
    for a in ARMS:
        notes[f"{a}_turns"] = V.stats(V.final(results, "turns", a))
        notes[f"{a}_turn1_pass@1"] = V.stats(V.final(results, "turn1_pass@1", a))
        for k in range(1, TURNS + 1):
            notes[f"{a}_turn{k}_train_reverse_kl"] = V.train_mean(results, a, f"turns/{k}/reverse_kl")
    return V.combine([V.better(results, "pass@1", "tcod", "opd", name="beats OPD")], RULE, notes)
