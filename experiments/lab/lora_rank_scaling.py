"""rsLoRA (Kalajdzievski, arXiv 2312.03732) in the lab: does scaling the adapters' product by
``alpha / sqrt(rank)`` instead of ``alpha / rank`` make a higher-rank adapter learn more?

    python -m opd_jax.lab.reproduce lora_rank_scaling [--mode smoke|quick|full]

The paper argues that LoRA's ``alpha / rank`` factor shrinks the adapters' learning as the rank
grows (with Adam, the update of the product scales with the factor), so that higher ranks learn
no more than low ones; ``alpha / sqrt(rank)`` keeps it stable in the rank. Here the lab's OPD
regime asks it of rank 16 (an eighth of the student's width), where the two factors differ 4x.
Hardware and wall time (quick: 3 arms x 3 seeds x the baseline's steps): see the experiments
README's table (2 AMD EPYC CPU cores). The set-up, the arms per mode, the metrics and the verdict
rule (written before any run) are the constants and functions below;
``experiments/lab/results/lora_rank_scaling/<mode>/`` holds the results.
"""

from opd_jax.lab import baseline as BL
from opd_jax.lab import verdicts as V

PAPER = "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA (rsLoRA, Kalajdzievski)"
ARXIV = "2312.03732"
CLAIM = ("LoRA's alpha / rank scaling slows the adapters' learning as the rank grows; scaling by "
         "alpha / sqrt(rank) (rsLoRA) instead lets a higher-rank adapter learn faster and reach a better "
         "result at the same learning rate and alpha.")
LR_FACTOR = 10.0  # as lora_capacity: LoRA Without Regret's rule of thumb, alpha 32
SETUP = (f"3 arms from the baseline regime's student, teacher, objective (the exact reverse KL), steps and "
         f"budget, each training only adapters on every projection of both layers (q, k, v, o, gate, up, "
         f"down; embedding, head and norms frozen), alpha 32, at {LR_FACTOR:g} times the baseline's learning "
         f"rate (lora_capacity's setting): 'lora_r16' scales by alpha / rank (2), 'lora_r16_rs' by alpha / "
         f"sqrt(rank) (8; student.lora_rslora), 'lora_r4_rs' is rank 4 under rsLoRA (16) for the rank "
         f"comparison. Metric: sampled pass@1 at the last evaluation; the exact reverse KL to the teacher "
         f"reported.")
RULE = ("Part 'rsLoRA learns more at rank 16': lora_r16_rs's pass@1 at the last evaluation is above "
        "lora_r16's by more than 2 pooled standard errors over seeds. Reproduced if it holds; not reproduced "
        "if it is below by that margin; inconclusive otherwise (and with fewer than 3 seeds). lora_r16_rs "
        "against lora_r4_rs (whether rank helps under rsLoRA) is reported beside the verdict, not decisive.")
FIGURE = ("pass@1", "greedy_pass@1", "reverse_kl", "entropy")


def arms(mode: str):
    lr = LR_FACTOR * BL.budget(mode).lr
    return [BL.arm("lora_r16", BL.OPD, mode, lr=lr, overrides=("student.lora_rank=16",)),
            BL.arm("lora_r16_rs", BL.OPD, mode, lr=lr, overrides=("student.lora_rank=16", "student.lora_rslora=true")),
            BL.arm("lora_r4_rs", BL.OPD, mode, lr=lr, overrides=("student.lora_rank=4", "student.lora_rslora=true"))]


def verdict(results, mode):
    parts = [V.better(results, "pass@1", "lora_r16_rs", "lora_r16", name="rsLoRA learns more at rank 16")]
    notes = {"lora_r16_rs vs lora_r4_rs": V.describe(V.better(results, "pass@1", "lora_r16_rs", "lora_r4_rs"))}
    return V.combine(parts, RULE, notes)
