"""PPO's sample reuse (Schulman et al., arXiv 1707.06347) in on-policy distillation, in the lab:
each sampled batch trains in several clipped steps (``loop.epochs``, ``loop.minibatches``), as
verl-based OPD papers train (``ppo_epochs``, ``ppo_mini_batch_size``), against one step per batch.

    python -m opd_jax.lab.reproduce rollout_reuse [--mode smoke|quick|full]

Hardware and wall time (quick: 4 arms x 3 seeds x the baseline's steps): see the experiments
README's table (2 AMD EPYC CPU cores).
The set-up, the arms per mode, the metrics and the verdict rule (written before any run) are the
constants and functions below; ``experiments/lab/results/rollout_reuse/<mode>/`` holds the results.
"""

import opd_jax.objectives as O
from opd_jax.lab import baseline as BL
from opd_jax.lab import setups as S
from opd_jax.lab import verdicts as V

PAPER = "Proximal Policy Optimization Algorithms (PPO, Schulman et al.), applied to on-policy distillation"
ARXIV = "1707.06347"
CLAIM = ("Several epochs of minibatch updates on each batch of samples, with the clipped surrogate, make "
         "better use of the samples than one gradient step per batch.")
SETUP = ("4 arms from the baseline regime's student, steps and learning rate, all Tinker's sampled-token "
         "OPD on the student's samples: 'opd_ppo' (O.OPDConfig(surrogate='ppo', clip_eps=0.2), one "
         "optimizer step per batch); 'reuse_2' (the same, each batch trained twice: loop.epochs=2, so the "
         "run's steps draw half the batches); 'reuse_2_is' (the same reuse with the unclipped importance-"
         "sampling surrogate: what the clip does); 'reuse_mb2' (the PPO surrogate, each batch split into 2 "
         "minibatches of 8 prompts x 4 samples, one step each: loop.minibatches=2). Before "
         "loop.epochs/minibatches existed, every lab arm trained one step per batch, where the importance "
         "ratio is 1 and a clip never acts. Metric: sampled pass@1 on held-out problems; the reuse arms' "
         "drift from the sampling policy (policy/ratio_dev, mean |pi/mu - 1| of the sampled tokens, and "
         "policy/approx_kl) in the training metrics.")
RULE = ("Part 'sample efficient': reuse_2's pass@1 at the last evaluation (after half the run's batches, "
        "trained twice) exceeds opd_ppo's at the evaluation halfway through its run (the same number of "
        "batches, the same samples) by more than 2 pooled standard errors over seeds. Reproduced if it "
        "holds; not reproduced if reversed by that margin; inconclusive otherwise (and with fewer than 3 "
        "seeds). Reported beside it, not part of the verdict: reuse_2 against opd_ppo at the same optimizer "
        "steps (the last evaluation: what reuse costs per step), reuse_2_is and reuse_mb2 against opd_ppo at "
        "the same samples, and the reuse arms' mean drift.")
FIGURE = ("pass@1", "greedy_pass@1", "reverse_kl", "entropy")
PPO = O.OPDConfig(surrogate="ppo", clip_eps=0.2)
REUSE = ("reuse_2", "reuse_2_is", "reuse_mb2")


def schedule(mode: str):
    return S.schedule(mode)


def arms(mode: str):
    return [BL.arm("opd_ppo", PPO, mode),
            BL.arm("reuse_2", PPO, mode, overrides=("loop.epochs=2",)),
            BL.arm("reuse_2_is", O.OPDConfig(), mode, overrides=("loop.epochs=2",)),
            BL.arm("reuse_mb2", PPO, mode, overrides=("loop.minibatches=2",))]


def _half(results) -> int:
    """The evaluation halfway through opd_ppo's runs: after half their batches (one step each)."""
    return max(e["step"] for r in results if r["arm"] == "opd_ppo" for e in r["evals"]) // 2


def verdict(results, mode):
    step = _half(results)
    half = V.final(results, "pass@1", "opd_ppo", step=step)

    def same_samples(arm):
        return V.compare(f"{arm} vs opd_ppo at the same samples", V.final(results, "pass@1", arm), half,
                         a_label=f"{arm} (last evaluation)", b_label=f"opd_ppo at step {step}",
                         metric="pass@1")
    notes = {"same_steps": V.better(results, "pass@1", "reuse_2", "opd_ppo", name="reuse_2 vs opd_ppo, same steps"),
             **{f"{arm}_same_samples": same_samples(arm) for arm in REUSE[1:]},
             **{f"{arm}_ratio_dev": V.train_mean(results, arm, "policy/ratio_dev") for arm in REUSE},
             **{f"{arm}_approx_kl": V.train_mean(results, arm, "policy/approx_kl") for arm in REUSE}}
    part = same_samples("reuse_2")
    part["name"] = "sample efficient"
    return V.combine([part], RULE, notes)
