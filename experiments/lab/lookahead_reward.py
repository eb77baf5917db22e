"""Lookahead Group Reward (LGR, Liu et al., arXiv 2605.30833) in the lab: sampled-token OPD plus a
loss on the student's top-k candidate tokens at its most uncertain positions, each rewarded by how
confident the teacher is one step after it, against OPD alone.

    python -m opd_jax.lab.reproduce lookahead_reward [--mode smoke|quick|full]

Hardware and wall time (quick: 5 arms x 3 seeds x the baseline's steps): see the experiments
README's table (2 AMD EPYC CPU cores).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/lookahead_reward/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "Your Teacher Can't Help You Here: Combating Supervision Fidelity Decay in On-Policy Distillation (LGR)"
ARXIV = "2605.30833"
CLAIM = ("Rewarding the student's top-K candidate tokens by the teacher confidence they induce at the next "
         "step (group-normalised, at entropy-triggered positions) improves the student over OPD (+2.57 "
         "mean@8 for a 7B student, more on longer generations).")
SETUP = ("4 arms from the baseline regime's student, steps and learning rate, on the student's samples, all "
         "Tinker's sampled-token OPD (importance-sampling surrogate): 'opd' (O.OPDConfig) and three LGR arms "
         "(O.LGRConfig: at each completion's 8 positions of highest student entropy, at least 0.5 nats, the "
         "student's top-4 tokens are tried as one-token branches in one tree-attention forward of the "
         "teacher; each candidate's reward is the teacher's largest next-token probability after it, "
         "standardised within the 4): 'lgr' (loss -sum_k sg(r_k) log p(v_k), weight 1 beside OPD), "
         "'lgr_0.1' (weight 0.1) and 'lgr_prob' (-sum_k sg(r_k) p(v_k), the expected reward's gradient); "
         "added after those runs, beside them: 'lgr_advantage' (the sampled token's reward, where it is a "
         "candidate, added to its OPD advantage, weight 1). "
         "The confidence measure, the loss form and its weight are reconstructions (the paper's abstract "
         "fixes only top-K, next-step confidence, group normalisation and the entropy trigger). Not "
         "tested: the claim's growth with generation length (the lab's answers are at most 32 tokens). "
         "Metric: sampled pass@1 on held-out problems at the last evaluation; greedy pass@1, pass@8, "
         "entropy and reverse KL to the teacher reported, and the fraction of tokens that were branch "
         "points (lgr/branch_frac) in the training metrics.")
RULE = ("Part 'beats OPD': lgr's pass@1 at the last evaluation exceeds opd's by more than 2 pooled standard "
        "errors over seeds. Reproduced if it holds; not reproduced if reversed by that margin; inconclusive "
        "otherwise (and with fewer than 3 seeds). lgr_0.1 and lgr_prob are reported beside it, not part of "
        "the verdict.")
FIGURE = ("pass@1", "greedy_pass@1", "reverse_kl", "entropy")
VARIANTS = ("lgr", "lgr_0.1", "lgr_prob", "lgr_advantage")


def schedule(mode: str):
    return S.schedule(mode)


def arms(mode: str):
    return [BL.arm("opd", O.OPDConfig(), mode),
            BL.arm("lgr", O.LGRConfig(), mode),
            BL.arm("lgr_0.1", O.LGRConfig(coef=0.1), mode),
            BL.arm("lgr_prob", O.LGRConfig(form="prob"), mode),
            BL.arm("lgr_advantage", O.LGRConfig(form="advantage"), mode)]


def verdict(results, mode):
    notes = {f"{a}_branch_frac": V.train_mean(results, a, "lgr/branch_frac") for a in VARIANTS}
    notes.update({f"{a}_pass@1": V.stats(V.final(results, "pass@1", a)) for a in VARIANTS[1:]})
    return V.combine([V.better(results, "pass@1", "lgr", "opd", name="beats OPD")], RULE, notes)
