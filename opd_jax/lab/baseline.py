"""The lab's baseline regime: the models, objective and budgets every lab experiment starts from.

Measured (``python -m opd_jax.lab.reproduce baseline_regime``, experiments/README.md): with the
shipped models, OPD below raises pass@1 from both student starts and beats CONTROL at the same
budget (quick mode, 3 seeds, 2026-12-03). A change to any value here changes every lab
experiment's arms: ``reproduce`` then asks for the stored results to be moved aside.

- :func:`lab`: the lab (data directory and models by name: ``teacher``, ``weak``, ``strong``)
  for a mode; ``smoke`` builds a tiny lab in seconds (``opd_jax.lab.zoo``'s smoke setting: those
  models; ``reproduce.lab_for`` trains the others an experiment names).
- :data:`OPD`: the baseline on-policy objective; :data:`CONTROL`: the same-budget off-policy
  control (supervised training on teacher samples).
- :func:`budget`: steps, learning rate, prompts and samples per step, evaluation cadence and
  seeds of one arm in a mode (``smoke``: seconds, for the tests; ``quick``: a few CPU minutes
  per arm, the default; ``full``: more steps and seeds).
"""

from __future__ import annotations

import dataclasses
import os

import opd_jax.objectives as O
from opd_jax.lab import runner as R
from opd_jax.lab import zoo

MODES = ("smoke", "quick", "full")

OPD = O.GKDConfig(beta=1.0)  # exact full-vocabulary reverse KL (the vocabulary is 49 tokens)
CONTROL = O.SFTConfig()


@dataclasses.dataclass(frozen=True)
class Budget:
    steps: int
    lr: float
    prompts: int
    samples: int
    seeds: tuple[int, ...]
    schedule: R.Schedule


BUDGETS = {
    "smoke": Budget(steps=2, lr=1e-2, prompts=2, samples=2, seeds=(0,),
                    schedule=R.Schedule(every=1, problems=4, k=2)),
    "quick": Budget(steps=200, lr=3e-4, prompts=16, samples=4, seeds=(0, 1, 2),
                    schedule=R.Schedule(every=50, problems=256, k=8)),
    "full": Budget(steps=600, lr=3e-4, prompts=16, samples=4, seeds=(0, 1, 2, 3, 4),
                   schedule=R.Schedule(every=50, problems=512, k=8)),
}


def budget(mode: str) -> Budget:
    if mode not in BUDGETS:
        raise ValueError(f"unknown mode {mode!r}; known: {MODES}")
    return BUDGETS[mode]


def lab(mode: str, *, root: str = os.path.join("runs", "lab")) -> R.Lab:
    """The lab of ``mode``: the shipped models (``lab/models``) and the data directory
    (built if missing); ``smoke`` trains its tiny models into ``root/smoke`` first."""
    if mode == "smoke":
        setting = zoo.SETTINGS["smoke"]
        data, models = os.path.join(root, "smoke", "data"), os.path.join(root, "smoke", "models")
        names = dict.fromkeys(("teacher", "weak", "strong"))
        for name in (n for n in names if n in setting.recipes):  # the others when an experiment asks
            zoo.build(name, setting, models=models, data_dir=data,
                      workdir=os.path.join(root, "smoke", "zoo"), log=None)
        paths = {n: os.path.join(models, n if n in setting.recipes else "weak") for n in names}
        return R.Lab(data, paths)
    budget(mode)
    zoo.ensure_data(zoo.DATA_DIR, zoo.SETTINGS["default"].data)
    return R.Lab(zoo.DATA_DIR, {n: os.path.join(zoo.MODELS, n) for n in zoo.SETTINGS["default"].recipes})


def arm(name: str, objective, mode: str, **fields) -> R.Arm:
    """An arm with the mode's budget (``fields`` override any of the arm's settings)."""
    b = budget(mode)
    base = dict(steps=b.steps, lr=b.lr, prompts=b.prompts, samples=b.samples)
    return R.Arm(name, objective, **(base | fields))
