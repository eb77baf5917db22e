"""Train the lab's teacher from scratch by supervised learning on its data, once, then evaluate it.

    python -m opd_jax.lab.teacher --workdir runs/lab              # data, teacher, evaluation
    python -m opd_jax.lab.teacher --workdir /tmp/lab --setting smoke  # seconds, for tests

``<workdir>/data`` is built first if missing (``opd_jax.lab.dataset``). The teacher trains in
``<workdir>/teacher`` through the same ``Trainer`` as every experiment (objective ``sft`` on the
records' solutions) and is saved there by Orbax; a second call finds the last checkpoint, trains
no further and only re-evaluates: the teacher is built once and cached. It is also exported as a
Hugging Face checkpoint with the tokenizer, ``teacher/hf`` (a student's ``ModelSpec(path=...)``).
The evaluation on the held-out prompts (``opd_jax.lab.evaluate``) is printed and written to
``teacher/eval.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from opd_jax.lab import countdown as C
from opd_jax.lab import tokenizer as T


@dataclasses.dataclass(frozen=True)
class Setting:
    layers: int
    hidden: int
    steps: int
    batch: int
    lr: float
    train: int  # problems in the data directory (when built here)
    test: int
    eval_problems: int
    difficulty: C.Difficulty = C.Difficulty()


SETTINGS = {
    "smoke": Setting(layers=1, hidden=32, steps=4, batch=8, lr=3e-3, train=32, test=8, eval_problems=8,
                     difficulty=C.Difficulty(count=3, max_number=9, max_target=40)),
    # Measured on 2 CPU cores (2026-11-23): ~9 minutes; greedy pass@1 ~0.70 on held-out problems.
    "default": Setting(layers=3, hidden=128, steps=1800, batch=64, lr=3e-3, train=8192, test=256,
                       eval_problems=256),
}
MAX_NEW_TOKENS = 32  # the longest answer of 4 numbers (3 steps), EOS included, fits
MAX_PROMPT_LEN = 24


def model_spec(setting: Setting, seed: int = 1):
    from opd_jax.models.config import tiny_config
    from opd_jax.training.config import ModelSpec
    h = setting.hidden
    return ModelSpec(config=tiny_config(vocab_size=T.vocab_size(), hidden_size=h, num_layers=setting.layers,
                                        num_heads=4, num_kv_heads=4, head_dim=h // 4, intermediate_size=4 * h),
                     seed=seed)


def experiment(setting: Setting, data_dir: str, workdir: str):
    import opd_jax.objectives as O
    from opd_jax.sampling import SamplerConfig
    from opd_jax.training.config import (CheckpointConfig, DataConfig, Experiment, LoopConfig, MeshConfig,
                                         OptimConfig, RunConfig, TeacherSpec)
    return Experiment(
        student=model_spec(setting), teacher=TeacherSpec(kind="self"), objective=O.SFTConfig(),
        loop=LoopConfig(lmbda=0.0),  # every step on the records' solutions
        sampler=SamplerConfig(max_new_tokens=MAX_NEW_TOKENS, eos_ids=(T.EOS_ID,), pad_id=T.PAD_ID),
        optim=OptimConfig(lr=setting.lr, warmup_steps=min(50, setting.steps // 10), schedule="cosine"),
        mesh=MeshConfig(data=1),
        data=DataConfig(path=os.path.join(data_dir, "train.jsonl"), batch_size=setting.batch,
                        max_prompt_len=MAX_PROMPT_LEN),
        ckpt=CheckpointConfig(every=max(1, setting.steps // 4), keep=1,
                              export=False),  # exported to teacher/hf by train() instead
        run=RunConfig(steps=setting.steps, workdir=workdir, diagnostics_k=0, tensorboard=False,
                      log_every=max(1, setting.steps // 20)))


def ensure_data(data_dir: str, setting: Setting) -> None:
    """Build the data directory unless a whole one is there already."""
    if not os.path.exists(os.path.join(data_dir, "dataset.json")):
        from opd_jax.lab import dataset
        dataset.build(data_dir, difficulty=setting.difficulty, train=setting.train, test=setting.test)


def train(workdir: str, setting: Setting):
    """The teacher's ``Trainer``, trained to ``setting.steps`` (resumed, or nothing to do, if a
    checkpoint is there), and the tokenizer."""
    from opd_jax.models import load_tokenizer
    from opd_jax.training.loop import Trainer
    data_dir = os.path.join(workdir, "data")
    ensure_data(data_dir, setting)
    tok = load_tokenizer(os.path.join(data_dir, "tokenizer"))
    trainer = Trainer(experiment(setting, data_dir, os.path.join(workdir, "teacher")), tokenizer=tok)
    trainer.run()
    export(trainer, tok, os.path.join(workdir, "teacher", "hf"))
    return trainer, tok


def export(trainer, tok, path: str) -> None:
    """The trained teacher as a Hugging Face checkpoint with its tokenizer (what a student's
    ``ModelSpec(path=...)`` loads), written whole or not at all; kept if already there."""
    if os.path.exists(os.path.join(path, "config.json")):
        return
    trainer.export(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs/lab", help="holds data/ and teacher/ (reused when present)")
    ap.add_argument("--setting", default="default", choices=sorted(SETTINGS))
    ap.add_argument("--k", type=int, default=8, help="samples per held-out problem for pass@k")
    a = ap.parse_args(argv)
    if a.k < 1:
        ap.error(f"--k must be >= 1, got {a.k}")
    setting = SETTINGS[a.setting]
    from opd_jax.config import write_json
    from opd_jax.data import load_examples
    from opd_jax.lab.evaluate import evaluate
    t0 = time.time()
    trainer, tok = train(a.workdir, setting)
    t1 = time.time()
    test = load_examples(os.path.join(a.workdir, "data", "test.jsonl"), tokenizer=tok,
                         max_prompt_len=MAX_PROMPT_LEN)[:setting.eval_problems]
    result = evaluate(trainer.s_graph, trainer.state.params, test, tok, k=a.k, max_new_tokens=MAX_NEW_TOKENS,
                      mesh=trainer.mesh)
    result.update(problems=len(test), k=a.k, setting=a.setting, train_seconds=round(t1 - t0, 1))
    write_json(result, os.path.join(a.workdir, "teacher", "eval.json"))
    print(f"teacher ({setting.layers} layers x {setting.hidden}, {setting.steps} steps, "
          f"{t1 - t0:.0f} s incl. data and compile) on {len(test)} held-out problems:")
    print("  " + "  ".join(f"{name} {value:.3f}" for name, value in result.items() if isinstance(value, float)))


if __name__ == "__main__":
    main()
