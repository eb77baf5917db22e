"""Multi-Rollout On-Policy Distillation (MOPD, Yu et al., arXiv 2605.12652) in the lab: the student
as its own teacher, reading one of its own successful peer samples of the same problem as a hint.

    python -m opd_jax.lab.reproduce peer_rollouts [--mode smoke|quick|full]

Needs the lab model ``contextual`` (``opd_jax.lab.zoo``: the strong student's recipe on records whose
prompts are plain, behind a rule, or behind a hint). Hardware and wall time (quick: 4 arms x 3 seeds x
the baseline's steps, and 5 min more for the arm added after): 29 min on 2 AMD EPYC CPU cores
(2026-12-07), after building ``contextual`` (about 8 min).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/peer_rollouts/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import variants
from opd_jax.lab import verdicts as V

PAPER = "Multi-Rollout On-Policy Distillation via Peer Successes and Failures (MOPD, Yu et al.)"
ARXIV = "2605.12652"
CLAIM = ("Conditioning the teacher on the student's successful peer rollouts of the same prompt (positive peer "
         "imitation) gives instance-adaptive dense supervision that improves the student over standard "
         "on-policy baselines such as RL with the verifier's reward (GRPO).")
# The lab's hint context ("hint <a solution> | <problem>"), the hint a successful peer's answer.
TEMPLATE = "hint {successes} | {prompt}"
PEERS = ("teacher.peers.successes=1", f"teacher.peers.template={TEMPLATE}", "teacher.peers.separator= ")
SETUP = ("4 arms from the 'contextual' student (it reads plain prompts, rules and hints), the baseline "
         "regime's steps, learning rate and samples per prompt: 'peers' (OPSD's objective, full-vocabulary "
         "JSD(0.5) at loss temperature 1.1, the teacher the student's current weights (teacher.kind=self, no "
         "gradient) reading one successful peer sample of the same problem, never the row's own, as a hint: "
         f"teacher.peers with the template {TEMPLATE!r}; rows without a successful peer learn nothing), "
         "'peers_initial' (the same, the teacher the student's frozen initial weights), 'reference' (the same "
         "objective and initial teacher reading a reference solution from the data instead: "
         "self_distillation's 'hint' arm) and 'rl' (REINFORCE with the verifier's 0/1 reward and a "
         "batch-mean baseline, the lab's stand-in for GRPO). Not tested: the contrastive construction (failed "
         "peers in the context): the 'contextual' student never read a failed attempt, so a self-teacher "
         "shown one has no learned use for it. Metric: sampled pass@1 on held-out problems at the last "
         "evaluation; the share of rows with a successful peer (peers/informed) in the training metrics.")
RULE = ("Part 'beats RL': peers' pass@1 at the last evaluation exceeds rl's by more than 2 pooled standard "
        "errors over seeds. Part 'improves the student': peers' pass@1 at the last evaluation exceeds its value "
        "before training by that margin. Reproduced if both hold; not reproduced if either is reversed by that "
        "margin; inconclusive otherwise (and with fewer than 3 seeds). peers_initial and reference are reported "
        "beside them, not part of the verdict.")
# peers_ema was added after the first run; it is reported in the notes, never in the verdict.
FIGURE = ("pass@1", "greedy_pass@1", "entropy")


def schedule(mode: str):
    return S.schedule(mode)


def arms(mode: str):
    peers = dict(student="contextual", overrides=PEERS)
    return [BL.arm("peers", O.OPSDConfig(), mode, teacher="self", **peers),
            BL.arm("peers_initial", O.OPSDConfig(), mode, teacher="initial", **peers),
            S.context_arm("reference", O.OPSDConfig(), mode, data=variants.HINT),
            BL.arm("rl", O.ReinforceConfig(), mode, student="contextual"),
            # added after the first run (the current-weights teacher collapsed, the frozen one did
            # not): a teacher in between, an EMA of the student with a time constant of 100 steps
            BL.arm("peers_ema", O.OPSDConfig(), mode, teacher="ema", student="contextual",
                   overrides=PEERS + ("teacher.ema_decay=0.99", "teacher.ema_every=1"))]


def verdict(results, mode):
    parts = [V.better(results, "pass@1", "peers", "rl", name="beats RL"),
             V.changes(results, "pass@1", "peers", up=True, name="improves the student")]
    notes = {a: V.stats(V.final(results, "pass@1", a)) for a in ("peers_initial", "reference", "peers_ema")}
    notes["informed"] = {a: V.train_mean(results, a, "peers/informed")
                         for a in ("peers", "peers_initial", "peers_ema")}
    return V.combine(parts, RULE, notes)
