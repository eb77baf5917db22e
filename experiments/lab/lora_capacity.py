"""LoRA Without Regret (Schulman et al., Thinking Machines, 2025) on LoRA (arXiv 2106.09685) in
the lab: do low-rank adapters, even of rank 1, distil as well as training every weight?

    python -m opd_jax.lab.reproduce lora_capacity [--mode smoke|quick|full]

The blog's argument is about reinforcement learning, which takes in a few bits per episode; OPD's
per-token signal carries more, so whether its claim carries over is the question. Hardware and
wall time (quick: 4 arms x 3 seeds x the baseline's steps): see the experiments README's table
(2 AMD EPYC CPU cores). The set-up, the arms per mode, the metrics and the verdict rule (written
before any run) are the constants and functions below; ``experiments/lab/results/lora_capacity/
<mode>/`` holds the results.
"""

from opd_jax.lab import baseline as BL
from opd_jax.lab import verdicts as V

PAPER = "LoRA Without Regret (Schulman et al., Thinking Machines blog, 2025), with LoRA (Hu et al.)"
ARXIV = "2106.09685"
CLAIM = ("For post-training that takes in few bits per episode (policy-gradient RL), LoRA matches training "
         "every weight, even at rank 1, when it is applied to every layer (the MLPs included) and given "
         "about 10 times full training's learning rate.")
RANKS = (1, 4, 16)
LR_FACTOR = 10.0  # the blog's rule of thumb for LoRA (alpha 32, the scale alpha / rank)
SETUP = (f"4 arms from the baseline regime's student, teacher, objective (the exact reverse KL), steps and "
         f"budget: 'full' trains every weight at the baseline's learning rate; 'lora_r1', 'lora_r4' and "
         f"'lora_r16' train only adapters of that rank on every projection of both layers (q, k, v, o, gate, "
         f"up, down; student.lora_rank, lora_alpha 32, so the scale is 32 / rank), everything else frozen "
         f"(embedding, head, norms), at {LR_FACTOR:g} times the baseline's learning rate. The student is "
         f"2 x 128, so rank 16 is an eighth of its width. Metric: sampled pass@1 at the last evaluation; "
         f"the exact reverse KL to the teacher reported.")
RULE = ("Part 'rank 1 learns': lora_r1's pass@1 at the last evaluation is above its start by more than 2 "
        "standard errors over seeds (so that matching full training is not matching a student that did not "
        "move). Part 'rank 16 matches full': lora_r16's pass@1 at the last evaluation is not below full's "
        "by more than 2 pooled standard errors over seeds. Part 'rank 1 matches full': the same for lora_r1. "
        "Reproduced if all three hold; not reproduced if a 'matches' part is below by that margin (or rank "
        "1 falls); inconclusive otherwise (and with fewer than 3 seeds). lora_r4 is reported beside the "
        "verdict, not decisive.")
FIGURE = ("pass@1", "greedy_pass@1", "reverse_kl", "entropy")


def arms(mode: str):
    lr = BL.budget(mode).lr
    return [BL.arm("full", BL.OPD, mode)] + [
        BL.arm(f"lora_r{r}", BL.OPD, mode, lr=LR_FACTOR * lr, overrides=(f"student.lora_rank={r}",))
        for r in RANKS]


def verdict(results, mode):
    parts = [V.changes(results, "pass@1", "lora_r1", name="rank 1 learns"),
             V.not_worse(results, "pass@1", "lora_r16", "full", name="rank 16 matches full"),
             V.not_worse(results, "pass@1", "lora_r1", "full", name="rank 1 matches full")]
    notes = {"lora_r4 vs full": V.describe(V.not_worse(results, "pass@1", "lora_r4", "full"))}
    return V.combine(parts, RULE, notes)
