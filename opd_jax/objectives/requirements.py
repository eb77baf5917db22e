"""What a recipe asks of the training loop that runs it.

A recipe is a loss; the loop decides what it is computed on. Three questions a loop asks before it
builds anything, answered here so that the answers live next to the recipes:

- :func:`loop_defaults`: the recipe's documented defaults for settings the loop owns (GKD's
  on-policy fraction lambda, UniSD's EMA teacher). The loop's configuration keeps the setting;
  left unset there, the recipe's default below is what runs.
- :func:`reads_teacher`: does the loss read the teacher at all (SFT and REINFORCE do not), so
  that a loop can skip scoring it.
- :func:`needs_behavior_logp`: does the loss read the behaviour log-probability the sampler
  recorded (a policy gradient with an importance ratio), which only the student's own samples
  have.
"""

from typing import Any

from opd_jax.objectives import recipes as R
from opd_jax.objectives.base import TEACHER, TEACHER_LOGITS, TEACHER_TOPK

# Recipes whose loss reads the ``behavior_logp`` input: a policy gradient through an importance
# ratio (or PPO clip) against the distribution the tokens were sampled from. A test checks this
# table against the losses themselves (tests/objectives/test_requirements.py).
_BEHAVIOR = (R.OPDConfig, R.EOPDConfig, R.AOPDConfig, R.REOPOLDConfig, R.VOPDConfig,
             R.ReinforceConfig, R.IWOPDConfig, R.FiReOPDConfig, R.TAOPDConfig, R.UniOPDConfig,
             R.PowerOPDConfig, R.HorizonOPDConfig, R.StableOPDConfig, R.LGRConfig, R.TCODConfig)


def loop_defaults(cfg: R.ObjectiveConfig) -> dict[str, Any]:
    """The recipe's own defaults for settings of the training loop, by name:

    - ``"lmbda"``: the probability that a step trains on fresh student samples (GKD: 0.5, TRL's
      default; the loop's default otherwise is 1, always on-policy);
    - ``"ema_decay"``, ``"ema_every"``: the EMA teacher's decay and period (UniSD: 0.9 every 10
      optimizer steps, its code's ``ref_model_mixup_beta`` and ``ref_model_sync_steps``).

    Settings the recipe has no opinion on are absent.
    """
    if isinstance(cfg, R.GKDConfig):
        return {"lmbda": 0.5}
    if isinstance(cfg, R.UniSDConfig):
        return {"ema_decay": 0.9, "ema_every": 10}
    return {}


def reads_teacher(cfg: R.ObjectiveConfig) -> bool:
    """True if the recipe's loss reads the teacher (its logits, top-k or sampled-token log-prob).

    Decided from the recipe's own features with a dense teacher, where every teacher quantity is
    a feature: a recipe reads the teacher iff one of its features takes a teacher input.
    """
    obj = R.build_objective(cfg, dense_teacher=True)
    teacher = {TEACHER, TEACHER_LOGITS, TEACHER_TOPK}
    return any(teacher & set(f.inputs) for f in obj.features.values())


def needs_behavior_logp(cfg: R.ObjectiveConfig) -> bool:
    """True if the recipe's loss reads the behaviour log-probability of the sampled tokens.

    Such a recipe is defined on the student's own samples only: on reference completions or
    teacher samples there is no behaviour log-probability of the student to read.
    """
    return isinstance(cfg, _BEHAVIOR)
