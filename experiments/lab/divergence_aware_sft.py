"""DASD (Yan et al., arXiv 2601.09088) in the lab: sequence-level distillation on the teacher's samples,
keeping those where the teacher's log-probs most exceed the student's, against keeping all.

    python -m opd_jax.lab.reproduce divergence_aware_sft [--mode smoke|quick|full]

Hardware and wall time (quick: 3 arms x 3 seeds x the baseline's steps): 34 min on 2 AMD EPYC
CPU cores (2026-12-06).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/divergence_aware_sft/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "Distribution-Aligned Sequence Distillation for Superior Long-CoT Reasoning (DASD, Yan et al.)"
ARXIV = "2601.09088"
CLAIM = ("For sequence-level distillation on teacher samples, keeping the samples the teacher finds likely and "
         "the student unlikely (divergence-aware selection) trains a better student than training on them all.")
KEEP = 0.5  # the batch quantile of the mean log q - log p a sequence must reach
SETUP = ("3 arms from the baseline regime's student, steps and learning rate, all supervised training on the "
         "teacher's samples of each step's prompts (sequence-level KD, loop.seq_kd): 'seqkd' (BL.CONTROL, the "
         "regime's samples per prompt), 'seqkd_x2' (BL.CONTROL on twice as many samples) and 'dasd' "
         f"(O.DASDConfig(keep_quantile={KEEP}): of twice as many samples, the sequences whose mean log q - log p "
         "is at least the batch's median, about as many tokens as 'seqkd' trains on). The score, the batch "
         "quantile and the top half are this reproduction's choices; DASD's temperature-scheduled teacher "
         "sampling and mixed-policy stage are not included. Metric: sampled pass@1 on held-out problems at "
         "the last evaluation; greedy pass@1, pass@8, entropy and reverse KL to the teacher reported, and the "
         "kept fraction (dasd/kept_seq_frac) in the training metrics.")
RULE = ("Two parts on pass@1 at the last evaluation, each by more than 2 pooled standard errors over seeds: "
        "'selection helps' (dasd > seqkd_x2: the same samples, all kept) and 'beats sequence KD' (dasd > "
        "seqkd: about the same trained tokens). Reproduced if both hold; not reproduced if either is reversed "
        "by that margin; inconclusive otherwise (and with fewer than 3 seeds).")
FIGURE = ("pass@1", "greedy_pass@1", "reverse_kl", "entropy")


def schedule(mode: str):
    return S.schedule(mode)


def arms(mode: str):
    twice = 2 * BL.budget(mode).samples
    return [BL.arm("seqkd", BL.CONTROL, mode, source="teacher"),
            BL.arm("seqkd_x2", BL.CONTROL, mode, source="teacher", samples=twice),
            BL.arm("dasd", O.DASDConfig(keep_quantile=KEEP), mode, source="teacher", samples=twice)]


def verdict(results, mode):
    parts = [V.better(results, "pass@1", "dasd", "seqkd_x2", name="selection helps"),
             V.better(results, "pass@1", "dasd", "seqkd", name="beats sequence KD")]
    return V.combine(parts, RULE, {"kept_seq_frac": V.train_mean(results, "dasd", "dasd/kept_seq_frac")})
