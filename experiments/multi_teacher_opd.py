"""On-policy distillation from several teachers, each prompt scored by its own (multi-domain OPD).

Two random teachers stand in for domain experts ("math", "code"); every prompt record names its
teacher in a ``teacher`` field, and ``teacher.combine="route"`` sends each row's vocabulary-wide
objective to that teacher. ``mix`` (``--set teacher.combine=mix``) scores every token with the
log-linear ensemble of both instead. Nothing is downloaded; the prompt file is written into the
work directory.

    python -m opd_jax.main --config experiments/multi_teacher_opd.py:smoke --workdir /tmp/mt

``smoke``: 4 steps (seconds after compilation). ``default``: 200 steps, a few minutes on a CPU.
With real checkpoints, set ``path`` in each ``ModelSpec`` of ``teacher.models`` below (local
Hugging Face directories sharing the student's tokenizer) and ``data.path`` to a JSONL file whose
records carry ``prompt`` and ``teacher``.
"""

import dataclasses
import json
import os

import numpy as np

from opd_jax.models.config import tiny_config
from opd_jax.objectives.recipes import GKDConfig
from opd_jax.sampling import SamplerConfig
from opd_jax.training.config import (CheckpointConfig, DataConfig, Experiment, LoopConfig,
                                     ModelSpec, OptimConfig, RunConfig, TeacherSpec)

VOCAB = 32
EOS, PAD = 1, 0
DOMAINS = ("math", "code")
SETTINGS = {"smoke": (4, 2), "default": (200, 50)}  # arg -> (steps, checkpoint period)


def get_config(arg: str = "") -> Experiment:
    arg = arg or "default"
    if arg not in SETTINGS:
        raise ValueError(f"multi_teacher_opd.py: unknown argument {arg!r}; use one of "
                         f"{sorted(SETTINGS)}")
    steps, every = SETTINGS[arg]
    teachers = tuple(ModelSpec(config=tiny_config(vocab_size=VOCAB, hidden_size=width,
                                                  num_layers=2), seed=seed)
                     for width, seed in ((48, 1), (40, 2)))
    return Experiment(
        student=ModelSpec(config=tiny_config(vocab_size=VOCAB, hidden_size=32, num_layers=1),
                          seed=0),
        teacher=TeacherSpec(kind="models", models=teachers, names=DOMAINS, combine="route"),
        objective=GKDConfig(beta=0.5),
        loop=LoopConfig(lmbda=1.0),  # on-policy at every step (GKD's own default is 0.5)
        sampler=SamplerConfig(max_new_tokens=8, eos_ids=(EOS,), pad_id=PAD, num_samples=2),
        optim=OptimConfig(lr=1e-2),
        data=DataConfig(path="", batch_size=8, max_prompt_len=16),  # "": synthetic, see prepare
        ckpt=CheckpointConfig(every=every, keep=2),
        run=RunConfig(steps=steps, workdir="runs/multi_teacher_opd", tensorboard=False,
                      diagnostics_k=4),
    )


def prepare(exp: Experiment) -> Experiment:
    """With no ``data.path``: write 64 synthetic prompts, half for each domain's teacher, to
    ``<workdir>/prompts.jsonl`` (if missing) and train on them."""
    if exp.data.path:
        return exp
    path = os.path.join(exp.run.workdir, "prompts.jsonl")
    if not os.path.exists(path):
        rng = np.random.default_rng(0)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            for i in range(64):
                ids = rng.integers(2, VOCAB, rng.integers(2, 9)).tolist()
                f.write(json.dumps({"prompt_ids": ids, "teacher": DOMAINS[i % 2]}) + "\n")
        os.replace(tmp, path)  # atomic: hosts may race
    return dataclasses.replace(exp, data=dataclasses.replace(exp.data, path=path))
