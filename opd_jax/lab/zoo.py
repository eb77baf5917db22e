"""The lab's models: the teacher and the student starts, made by supervised training from scratch
and shipped in the repository (``lab/models/<name>``) so that nobody has to train them first.

    python -m opd_jax.lab.zoo build [NAME ...]   # data (if missing), then each model (cached)
    python -m opd_jax.lab.zoo check [NAME ...]   # re-evaluate shipped models against their manifests
    python -m opd_jax.lab.zoo build --setting smoke --models /tmp/m --data /tmp/d   # seconds

Each model directory is a Hugging Face checkpoint with the lab's tokenizer (what a
``ModelSpec(path=...)`` loads) and a ``manifest.json``: the command that made it, its recipe
(architecture, steps, learning rate, seed, batch), the data it was trained on (the dataset's own
manifest and the SHA-256 of its training file), the git commit, the training time, and its
held-out evaluation (greedy pass@1, pass@1, pass@k, distinct correct solutions, entropy). The
greedy evaluation is deterministic on a CPU, so ``check`` can compare it exactly.

The data directory is built by :mod:`opd_jax.lab.dataset` from ``DATA`` (deterministic: the
same records on every machine), under ``runs/lab/data`` unless told otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import time

from opd_jax.lab import countdown as C
from opd_jax.lab import variants

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "lab", "models")
DATA_DIR = os.path.join("runs", "lab", "data")
MAX_NEW_TOKENS = 32  # the longest answer of 4 numbers (3 steps), EOS included, fits
MAX_PROMPT_LEN = 24


@dataclasses.dataclass(frozen=True)
class Data:
    """How the lab's data directory is built (:func:`opd_jax.lab.dataset.build`'s arguments)."""
    difficulty: C.Difficulty = C.Difficulty()
    train: int | None = None  # None: every problem of the training split
    solutions: str = "all"
    test: int = 512
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Supervised training of a model from scratch on the lab's data."""
    layers: int
    hidden: int
    steps: int
    lr: float
    schedule: str = "cosine"
    warmup: int = 100
    batch: int = 64
    seed: int = 1
    # the training records in the data directory: its own train.jsonl, or a derived file
    # (opd_jax.lab.variants: the backward format, prompts with privileged contexts)
    records: str = "train.jsonl"
    # a model of the same setting that training starts from (fine-tuning), instead of a random init
    init: str | None = None
    # the lab's tokenizer ("chars") or the numbers tokenizer of another "family" (its records are
    # then the text-only files, opd_jax.lab.tokenizer.build_numbers)
    tokenizer: str = "chars"


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    data: Data
    recipes: dict[str, Recipe]
    eval_problems: int = 256
    k: int = 8


SETTINGS = {
    "default": Setting("default", Data(), {
        "teacher": Recipe(layers=4, hidden=256, steps=3000, lr=2e-3, seed=1),
        # the student starts: one run at a constant learning rate, stopped early (weak) or late
        # (strong), so that the arms continue from a student whose optimizer has not annealed
        "weak": Recipe(layers=2, hidden=128, steps=900, lr=2e-3, schedule="constant", seed=5),
        "strong": Recipe(layers=2, hidden=128, steps=1800, lr=2e-3, schedule="constant", seed=5),
    }),
    "smoke": Setting("smoke", Data(C.Difficulty(count=3, max_number=9, max_target=40), train=32, solutions="one",
                          test=8), {
        "teacher": Recipe(layers=1, hidden=32, steps=4, lr=3e-3, warmup=1, batch=8),
        "weak": Recipe(layers=1, hidden=16, steps=2, lr=3e-3, warmup=1, batch=8, seed=5),
    }, eval_problems=8, k=2),
}


def _derive(setting: Setting, name: str, base: str, records: str) -> None:
    """Add model ``name`` to ``setting``: ``base``'s recipe trained on other records."""
    setting.recipes[name] = dataclasses.replace(setting.recipes[base], records=records)


# Models some lab experiments need beyond the teacher and the student starts (experiments/lab):
# the teacher's recipe on backward-format solutions (an incompatible teacher: compatibility), the
# teacher fine-tuned on its data plus coverage records (student-like first steps continued with
# correct arithmetic: a teacher informed off its support, baseline_levers), and a student start
# that also read rules and hints before problems (its own privileged teacher: self_distillation,
# unified_sd), and the strong start's recipe with the numbers tokenizer on the text-only records (a
# teacher of another model family: cross_tokenizer), and the teacher and the weak start fine-tuned
# on the retry records (a wrong answer, "no:", a solution: the lab's multi-turn episodes,
# turn_curriculum_episodes), and again on the records with up to two wrong answers (deeper
# episodes: turn_curriculum_two_retries), and a drafter far smaller than the teacher (the weak
# start's recipe at one layer and half the width: speculative_drafter_small). Derived from the
# recipes above, whatever their values.
for _setting in SETTINGS.values():
    if "teacher" in _setting.recipes:
        _derive(_setting, "teacher_backward", "teacher", variants.BACKWARD)
        _t = _setting.recipes["teacher"]
        _setting.recipes["teacher_coverage"] = dataclasses.replace(
            _t, records=variants.COVERAGE, init="teacher", steps=max(1, _t.steps // 5),
            lr=_t.lr / 4, warmup=min(_t.warmup, 50))
        for _name, _records in (("teacher_retry", variants.RETRY), ("teacher_retry2", variants.RETRY2)):
            _setting.recipes[_name] = dataclasses.replace(
                _t, records=_records, init="teacher", steps=max(1, _t.steps // 10), lr=_t.lr / 4,
                warmup=min(_t.warmup, 30))
    if "weak" in _setting.recipes:
        _w = _setting.recipes["weak"]
        _setting.recipes["weak_small"] = dataclasses.replace(_w, layers=1, hidden=max(8, _w.hidden // 2))
        for _name, _records in (("weak_retry", variants.RETRY), ("weak_retry2", variants.RETRY2)):
            _setting.recipes[_name] = dataclasses.replace(
                _w, records=_records, init="weak", steps=max(1, _w.steps // 9), warmup=min(_w.warmup, 10))
    _student = next((n for n in ("strong", "weak") if n in _setting.recipes), None)
    if _student:
        _derive(_setting, "contextual", _student, variants.CONTEXTS)
        # a teacher of another tokenizer at the strong start's level (cross_tokenizer)
        _setting.recipes["strong_numbers"] = dataclasses.replace(
            _setting.recipes[_student], tokenizer="numbers", records=variants.TRAIN_TEXT)


def eval_records(records: str) -> str:
    """The held-out records a model trained on ``records`` is evaluated on: a backward-format
    model's answers are accepted in either format (the forward-only records would score them
    all wrong); a model of another tokenizer reads the text-only records."""
    return {variants.BACKWARD: variants.TEST_EITHER, variants.TRAIN_TEXT: variants.TEST_TEXT}.get(
        records, "test.jsonl")


def ensure_data(data_dir: str, data: Data) -> dict:
    """The data directory's manifest, building the directory first if it holds no dataset."""
    path = os.path.join(data_dir, "dataset.json")
    if not os.path.exists(path):
        from opd_jax.lab import dataset
        dataset.build(data_dir, difficulty=data.difficulty, train=data.train, test=data.test,
                      solutions=data.solutions, seed=data.seed)
    with open(path) as f:
        return json.load(f)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_spec(recipe: Recipe, models: str = MODELS):
    """The model ``recipe`` trains: a random init of its architecture, or the lab model
    ``recipe.init`` (a checkpoint under ``models``) when it fine-tunes one."""
    from opd_jax.lab import tokenizer as T
    from opd_jax.models.config import tiny_config
    from opd_jax.training.config import ModelSpec
    if recipe.init:
        return ModelSpec(path=os.path.join(models, recipe.init), seed=recipe.seed)
    h = recipe.hidden
    cfg = tiny_config("llama", vocab_size=T.vocab_size(recipe.tokenizer), hidden_size=h, num_layers=recipe.layers,
                      num_heads=4, num_kv_heads=4, head_dim=h // 4, intermediate_size=4 * h)
    return ModelSpec(config=cfg, seed=recipe.seed)


def experiment(recipe: Recipe, data_dir: str, workdir: str, models: str = MODELS):
    """Supervised training of ``recipe`` on the data's solutions, as an ``Experiment``."""
    import opd_jax.objectives as O
    from opd_jax.lab.tokenizer import EOS_ID, PAD_ID
    from opd_jax.sampling import SamplerConfig
    from opd_jax.training.config import (CheckpointConfig, DataConfig, Experiment, LoopConfig,
                                         MeshConfig, OptimConfig, RunConfig, TeacherSpec)
    return Experiment(
        student=model_spec(recipe, models), teacher=TeacherSpec(kind="self"), objective=O.SFTConfig(),
        loop=LoopConfig(lmbda=0.0),  # every step on the records' solutions
        sampler=SamplerConfig(max_new_tokens=MAX_NEW_TOKENS, eos_ids=(EOS_ID,), pad_id=PAD_ID),
        optim=OptimConfig(lr=recipe.lr, warmup_steps=min(recipe.warmup, recipe.steps // 10),
                          schedule=recipe.schedule),
        mesh=MeshConfig(data=1),
        data=DataConfig(path=os.path.join(data_dir, recipe.records), batch_size=recipe.batch,
                        max_prompt_len=MAX_PROMPT_LEN if recipe.records in ("train.jsonl", variants.TRAIN_TEXT)
                        else variants.MAX_CONTEXT_PROMPT_LEN, shuffle_seed=recipe.seed),
        ckpt=CheckpointConfig(every=max(1, recipe.steps // 4), keep=1, export=False),
        run=RunConfig(steps=recipe.steps, seed=recipe.seed, workdir=workdir, diagnostics_k=0,
                      tensorboard=False, log_every=max(1, recipe.steps // 20)))


def evaluate_model(path: str, data_dir: str, problems: int, k: int, records: str = "test.jsonl") -> dict:
    """A checkpoint's held-out evaluation (the lab's metrics) on ``records`` of ``data_dir``, read
    with the checkpoint's own tokenizer."""
    from flax import nnx

    from opd_jax.data import load_examples
    from opd_jax.lab.evaluate import evaluate
    from opd_jax.models import from_pretrained, load_tokenizer
    tok = load_tokenizer(path)
    test = load_examples(variants.ensure(data_dir, records), tokenizer=tok,
                         max_prompt_len=MAX_PROMPT_LEN)[:problems]
    graphdef, params = nnx.split(from_pretrained(path), nnx.Param)
    out = evaluate(graphdef, params, test, tok, k=k, max_new_tokens=MAX_NEW_TOKENS)
    return {"problems": len(test), "k": k, **{m: round(v, 6) for m, v in out.items()}}


def build(name: str, setting: Setting, *, models: str = MODELS, data_dir: str = DATA_DIR,
          workdir: str = os.path.join("runs", "lab", "zoo"), log=print) -> dict:
    """Train model ``name`` of ``setting`` (resumed from its checkpoints if interrupted) and write
    it with its manifest to ``models/name``, whole or not at all. A model already there is kept."""
    from opd_jax.config import write_json
    from opd_jax.export import export
    from opd_jax.lab import runner
    from opd_jax.models import load_tokenizer
    from opd_jax.training.loop import Trainer
    out = os.path.join(models, name)
    if os.path.exists(os.path.join(out, "manifest.json")):
        with open(os.path.join(out, "manifest.json")) as f:
            return json.load(f)
    if name not in setting.recipes:
        raise ValueError(f"unknown lab model {name!r}; known: {sorted(setting.recipes)}")
    recipe = setting.recipes[name]
    if recipe.init:  # the model it fine-tunes first
        build(recipe.init, setting, models=models, data_dir=data_dir, workdir=workdir, log=log)
    data = ensure_data(data_dir, setting.data)
    variants.ensure(data_dir, recipe.records)
    variants.ensure(data_dir, eval_records(recipe.records))
    if recipe.tokenizer == "numbers":
        from opd_jax.lab.tokenizer import build_numbers
        tok = build_numbers()
    else:
        tok = load_tokenizer(os.path.join(data_dir, "tokenizer"))
    t0 = time.perf_counter()
    trainer = Trainer(experiment(recipe, data_dir, os.path.join(workdir, name), models), tokenizer=tok)
    trainer.run()
    seconds = time.perf_counter() - t0
    tmp = f"{out}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    export(trainer.s_graph, tmp, params=trainer.state.params, tokenizer=tok)
    command = f"python -m opd_jax.lab.zoo build {name} --setting {setting.name}"
    manifest = {"name": name, "command": command,
                "recipe": dataclasses.asdict(recipe), "architecture": "llama",
                "data": {"dataset": data, "train_sha256": sha256(os.path.join(data_dir, recipe.records))},
                "train_seconds": round(seconds, 1), "commit": runner.provenance()["commit"],
                "date": time.strftime("%Y-%m-%d"),
                **({"init": {"name": recipe.init, "model_sha256": sha256(
                    os.path.join(models, recipe.init, "model.safetensors"))}} if recipe.init else {}),
                "eval": evaluate_model(tmp, data_dir, setting.eval_problems, setting.k, eval_records(recipe.records))}
    write_json(manifest, os.path.join(tmp, "manifest.json"))
    os.makedirs(models, exist_ok=True)
    os.replace(tmp, out)
    if log:
        log(f"{name}: " + "  ".join(f"{m} {v:.3f}" for m, v in manifest["eval"].items()
                                    if isinstance(v, float)) + f"  ({seconds:.0f} s)")
    return manifest


def check(name: str, *, models: str = MODELS, data_dir: str = DATA_DIR) -> dict:
    """Evaluate a shipped model again; returns ``{metric: (manifest, now)}`` for every metric."""
    with open(os.path.join(models, name, "manifest.json")) as f:
        manifest = json.load(f)
    want = manifest["eval"]
    records = eval_records(manifest["recipe"].get("records", "train.jsonl"))
    variants.ensure(data_dir, records)
    now = evaluate_model(os.path.join(models, name), data_dir, want["problems"], want["k"], records)
    return {m: (want[m], now[m]) for m in want}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("build", "check"))
    ap.add_argument("names", nargs="*", help="models (default: every model of the setting)")
    ap.add_argument("--setting", default="default", choices=sorted(SETTINGS))
    ap.add_argument("--models", default=MODELS, help="where the models are written / read")
    ap.add_argument("--data", default=DATA_DIR, help="the lab's data directory (built if missing)")
    a = ap.parse_args(argv)
    setting = SETTINGS[a.setting]
    names = a.names or sorted(setting.recipes)
    unknown = [n for n in names if n not in setting.recipes]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {sorted(setting.recipes)}")
    from opd_jax import process
    process.prepare()  # allocator policy and compilation cache, before JAX starts
    for name in names:
        if a.command == "build":
            build(name, setting, models=a.models, data_dir=a.data)
        else:
            ensure_data(a.data, setting.data)
            rows = check(name, models=a.models, data_dir=a.data)
            bad = {m: v for m, v in rows.items() if m == "greedy_pass@1" and v[0] != v[1]}
            print(f"{name}: " + "  ".join(f"{m} {v[0]:.3f}/{v[1]:.3f}" for m, v in rows.items()
                                          if isinstance(v[0], float)))
            if bad:
                raise SystemExit(f"{name}: greedy pass@1 {bad['greedy_pass@1'][1]} differs from its "
                                 f"manifest's {bad['greedy_pass@1'][0]}")


if __name__ == "__main__":
    main()
