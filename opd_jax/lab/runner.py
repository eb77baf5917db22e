"""Run the arms of a lab experiment over seeds, evaluating along the way, and keep every result.

An :class:`Arm` is one way of training a student: its objective, where each step's completions
come from (the student's own samples, the teacher's, or the data's solutions), its teacher, its
starting model and its optimisation budget. :func:`run` trains one arm for one seed through the
project's ``Trainer`` (the same code path as every experiment) and evaluates the student on
held-out problems before training and every ``Schedule.every`` steps: the lab's evaluation
(greedy pass@1, pass@1, pass@k, distinct correct solutions, entropy), the exact token
diagnostics against the arm's teacher on the student's samples (reverse KL, entropies, top-k
overlap), and the schedule's further measures (:mod:`opd_jax.lab.measures`: entropy at the
teacher's uncertain positions, tail mass, overlap mass and advantage, rule adherence, gradient
variance). :func:`run_all` runs arms x seeds, one JSON per run under ``out/<arm>/seed<s>.json``,
written atomically and reused when present, so an interrupted experiment resumes where it
stopped and every configuration that was run stays in the results.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np

import opd_jax.objectives as O

SOURCES = ("student", "teacher", "data")


@dataclasses.dataclass(frozen=True)
class Lab:
    """The lab's pieces on disk: the data directory and the models by name (HF checkpoints)."""
    data: str
    models: Mapping[str, str]

    def path(self, name: str) -> str:
        """A model's checkpoint: a name of ``models`` or a path."""
        if name in self.models:
            return self.models[name]
        if os.path.isdir(name):
            return name
        raise ValueError(f"unknown lab model {name!r}: not one of {sorted(self.models)} nor a directory")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One way of training a student. ``source``: each step trains on ``"student"`` samples
    (on-policy), ``"teacher"`` samples (sequence-level KD) or the ``"data"``'s solutions.
    ``teacher``: a model of the lab, a path, or ``"self"`` / ``"initial"`` / ``"ema"``.
    ``overrides``: further ``section.field=value`` settings, as on the command line."""
    name: str
    objective: O.ObjectiveConfig
    source: Literal["student", "teacher", "data"] = "student"
    student: str = "weak"
    teacher: str = "teacher"
    steps: int = 200
    lr: float = 3e-4
    prompts: int = 16
    samples: int = 4
    warmup: int = 10
    data: str = "train.jsonl"  # the prompt file in the lab's data directory
    overrides: tuple[str, ...] = ()

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"arm {self.name!r}: source must be one of {SOURCES}, got {self.source!r}")
        if self.source != "student" and O.needs_behavior_logp(self.objective):
            raise ValueError(f"arm {self.name!r}: objective {O.recipe_name(self.objective)!r} is a "
                             "policy gradient on the student's own samples; use source='student'")
        if self.steps < 1 or self.prompts < 1 or self.samples < 1:
            raise ValueError(f"arm {self.name!r}: steps, prompts and samples must be >= 1")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Evaluation cadence: every ``every`` steps (and at 0 and the end) on the first
    ``problems`` held-out problems, ``k`` samples each. ``reference``: a model of the lab that
    the token diagnostics compare the student with (the same for every arm, whatever its own
    teacher; None: no diagnostics)."""
    every: int = 50
    problems: int = 256
    k: int = 8
    reference: str | None = "teacher"
    # further per-evaluation measures (opd_jax.lab.measures specs, e.g. "tail_mass:4"), against
    # the arm's own teacher when it is a model of the lab, else against ``reference``
    measures: tuple[str, ...] = ()
    test: str = "test.jsonl"  # the held-out records in the lab's data directory
    # answers per held-out episode: > 1 evaluates multi-turn episodes, the lab's retry environment
    # saying "no:" after each wrong answer (opd_jax.lab.evaluate; the metrics read the last answer)
    turns: int = 1

    def __post_init__(self):
        from opd_jax.lab import measures
        measures.check(self.measures)
        if not 1 <= self.turns <= 3:
            raise ValueError(f"schedule.turns must be 1, 2 or 3 (episodes fit the lab models' 128 "
                             f"positions), got {self.turns}")


def experiment(arm: Arm, lab: Lab, seed: int, workdir: str):
    """The arm as an ``Experiment`` for ``seed``."""
    from opd_jax.config import apply_overrides
    from opd_jax.lab import teacher as LT
    from opd_jax.lab.tokenizer import EOS_ID, PAD_ID
    from opd_jax.sampling import SamplerConfig
    from opd_jax.training.config import (CheckpointConfig, DataConfig, Experiment, LoopConfig,
                                         MeshConfig, ModelSpec, OptimConfig, RunConfig, TeacherSpec)
    if arm.teacher in ("self", "initial", "ema"):
        teacher = TeacherSpec(kind=arm.teacher)
    else:
        teacher = TeacherSpec(kind="model", model=ModelSpec(path=lab.path(arm.teacher)))
    on_policy = arm.source == "student"
    exp = Experiment(
        student=ModelSpec(path=lab.path(arm.student)), teacher=teacher, objective=arm.objective,
        loop=LoopConfig(lmbda=1.0 if on_policy else 0.0, seq_kd=arm.source == "teacher"),
        sampler=SamplerConfig(max_new_tokens=LT.MAX_NEW_TOKENS, eos_ids=(EOS_ID,), pad_id=PAD_ID,
                              num_samples=arm.samples if on_policy else 1),
        optim=OptimConfig(lr=arm.lr, warmup_steps=arm.warmup), mesh=MeshConfig(data=1),
        data=DataConfig(path=os.path.join(lab.data, arm.data),
                        batch_size=arm.prompts * (1 if on_policy else arm.samples),
                        max_prompt_len=LT.MAX_PROMPT_LEN, shuffle_seed=seed),
        ckpt=CheckpointConfig(every=0, keep=1, async_save=False, export=False),
        run=RunConfig(steps=arm.steps, seed=seed, workdir=workdir, log_every=max(1, arm.steps // 20),
                      diagnostics_k=0, tensorboard=False, progress=False))
    return apply_overrides(exp, list(arm.overrides))


def _model(path: str):
    from flax import nnx

    from opd_jax.models import from_pretrained
    return nnx.split(from_pretrained(path), nnx.Param)


def _replicated(model, mesh):
    if model is None:
        return None
    import jax
    from jax.sharding import NamedSharding, PartitionSpec
    graphdef, params = model
    return graphdef, jax.device_put(params, NamedSharding(mesh, PartitionSpec()))


_EVALUATED: dict = {}  # the evaluations before training of this process, by what they depend on


def _evaluated_once(key, call: Callable[[], dict]) -> dict:
    """``call()``, or a copy of its result for the same ``key`` earlier in this process."""
    if key not in _EVALUATED:
        _EVALUATED[key] = call()
    return dict(_EVALUATED[key])


def _digest(tree) -> str:
    """A hash of the values, shapes and dtypes of a pytree's arrays."""
    import hashlib

    import jax
    h = hashlib.sha256()
    for x in jax.tree.leaves(tree):
        a = np.asarray(jax.device_get(x))
        h.update(f"{a.shape} {a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def run(arm: Arm, lab: Lab, seed: int, *, workdir: str, schedule: Schedule = Schedule(),
        log: Callable[[str], None] | None = None) -> dict:
    """Train ``arm`` from its start for ``seed`` in ``workdir`` (emptied first) and return its
    record: the evaluations (with the step and the FLOPs spent so far), the mean training
    metrics between evaluations, and the wall time. The evaluation before training is the same
    for every arm and seed from one start, so a process computes it once per start."""
    from opd_jax.data import load_examples
    from opd_jax.lab import data as L
    from opd_jax.lab import teacher as LT
    from opd_jax.models import load_tokenizer
    from opd_jax.training.loop import Trainer

    shutil.rmtree(workdir, ignore_errors=True)
    tok = load_tokenizer(os.path.join(lab.data, "tokenizer"))
    test = load_examples(os.path.join(lab.data, schedule.test), tokenizer=tok,
                         max_prompt_len=LT.MAX_PROMPT_LEN)[:schedule.problems]
    exp = experiment(arm, lab, seed, workdir)
    updates = exp.loop.updates  # the run's steps advance by this much at a time
    if schedule.every % updates and updates % schedule.every:
        raise ValueError(f"arm {arm.name!r}: its batches train {updates} optimizer steps each "
                         f"(loop.minibatches x loop.epochs), which neither divides the evaluation "
                         f"interval of {schedule.every} steps nor is a multiple of it (evaluations "
                         "would be skipped); change either")
    reference = _model(lab.path(schedule.reference)) if schedule.reference else None
    against = reference  # what the measures compare with: the arm's own teacher model if it has one
    if schedule.measures and arm.teacher not in ("self", "initial", "ema", schedule.reference):
        against = _model(lab.path(arm.teacher))
    evals, train, pending, spent = [], [], [], {"flops": 0.0}
    t0 = time.perf_counter()

    def evaluate_now(trainer, step):
        from opd_jax.lab.evaluate import evaluate
        call = lambda: evaluate(trainer.s_graph, trainer.state.params, test, tok, k=schedule.k,  # noqa: E731
                                mesh=trainer.mesh, teacher=reference, turns=schedule.turns)
        # Before training, every arm and seed from the same start gets the same evaluation (its
        # seed is fixed): computed once per process.
        e = _evaluated_once((trainer.s_graph, _digest(trainer.state.params), lab.data, schedule.test,
                             schedule.problems, schedule.k, schedule.turns,
                             reference and (reference[0], _digest(reference[1])),
                             tuple(trainer.mesh.shape.items())), call) if step == 0 else call()
        if schedule.measures:
            from opd_jax.lab import measures
            e.update(measures.evaluate(schedule.measures, measures.Context(
                student=(trainer.s_graph, trainer.state.params), teacher=against, examples=test,
                tokenizer=tok, k=schedule.k, mesh=trainer.mesh, seed=seed,
                train_examples=trainer.examples, prompts=arm.prompts, samples=arm.samples)))
        evals.append({"step": step, "flops": spent["flops"], **e})
        if log:
            log(f"{arm.name} seed {seed} step {step}: " + "  ".join(
                f"{k} {v:.3f}" for k, v in e.items() if k in ("greedy_pass@1", "pass@1", "reverse_kl")))

    def callback(trainer, step, metrics):
        spent["flops"] += sum(v for k, v in metrics.items() if k.startswith("flops/"))
        pending.append(metrics)
        if step % schedule.every == 0 or step == arm.steps:
            keys = sorted(set().union(*pending))
            train.append({"step": step, **{k: float(np.mean([m[k] for m in pending if k in m]))
                                          for k in keys}})
            pending.clear()
            evaluate_now(trainer, step)
        return None

    trainer = Trainer(exp, tokenizer=tok, callbacks=(callback,), reward_fn=L.reward_fn(tok))
    # the evaluation's models live where the student does: replicated over the trainer's mesh
    reference, against = (_replicated(m, trainer.mesh) for m in (reference, against))
    evaluate_now(trainer, 0)
    trainer.run()
    return {"arm": arm.name, "seed": seed, "config": _arm_dict(arm), "evals": evals, "train": train,
            "wall_s": round(time.perf_counter() - t0, 1)}


def _arm_dict(arm: Arm) -> dict:
    from opd_jax.config import to_dict
    d = {f.name: getattr(arm, f.name) for f in dataclasses.fields(arm)}
    d["objective"] = {"recipe": O.recipe_name(arm.objective), **to_dict(arm.objective)}
    d["overrides"] = list(arm.overrides)
    return d


def provenance() -> dict:
    """The git commit (with ``+dirty`` for uncommitted changes) and the command of this process."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += "+dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"commit": commit, "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}


def hardware() -> dict:
    """What this process runs on: the JAX platform and devices, the CPU count and the load."""
    import platform

    import jax
    d = jax.devices()[0]
    return {"platform": d.platform, "device_kind": getattr(d, "device_kind", d.platform),
            "devices": jax.device_count(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def schedule_record(schedule: Schedule) -> dict:
    """The schedule as stored with a run (JSON types; the fields added after the first stored
    runs are left out at their defaults, so those runs still count as the same schedule)."""
    import json
    d = dataclasses.asdict(schedule)
    for name, default in (("measures", ()), ("test", "test.jsonl"), ("turns", 1)):
        if d[name] == default:
            del d[name]
    return json.loads(json.dumps(d))


def run_all(arms: list[Arm], lab: Lab, seeds: list[int], *, out: str, schedule: Schedule = Schedule(),
            log: Callable[[str], None] | None = print) -> list[dict]:
    """Every arm for every seed; a run whose result file exists (same arm configuration) is read
    back instead of trained again. Results: ``out/<arm>/seed<s>.json``."""
    import json

    from opd_jax.config import write_json
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names repeat: {names}")
    results = []
    for arm in arms:
        for seed in seeds:
            path = os.path.join(out, arm.name, f"seed{seed}.json")
            if os.path.exists(path):
                with open(path) as f:
                    old = json.load(f)
                if old.get("config") == json.loads(json.dumps(_arm_dict(arm))) and \
                        old.get("schedule") == schedule_record(schedule):
                    results.append(old)
                    continue
                raise ValueError(f"{path} holds a run of another configuration of arm {arm.name!r}; "
                                 "give the changed arm a new name (every configuration tried is kept)")
            work = os.path.join(out, arm.name, f"seed{seed}.work")
            r = run(arm, lab, seed, workdir=work, schedule=schedule, log=log)
            r.update(schedule=schedule_record(schedule), hardware=hardware(), **provenance())
            write_json(r, path)
            shutil.rmtree(work, ignore_errors=True)
            results.append(r)
    return results


# ---------------------------------------------------------------------------- reading results

def values(results: list[dict], metric: str, *, step: int | None = None) -> dict[str, list[float]]:
    """Per arm, the metric of every seed at evaluation ``step`` (None: each run's last)."""
    out: dict[str, list[float]] = {}
    for r in results:
        evals = r["evals"] if step is None else [e for e in r["evals"] if e["step"] == step]
        if not evals:
            raise ValueError(f"arm {r['arm']!r} seed {r['seed']} has no evaluation at step {step}")
        out.setdefault(r["arm"], []).append(float(evals[-1][metric]))
    return out


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    a = np.asarray(xs, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def gap(better: list[float], worse: list[float], *, factor: float = 2.0) -> dict:
    """Whether ``mean(better) - mean(worse)`` exceeds ``factor`` pooled standard errors
    (``sqrt(s_a^2 / n_a + s_b^2 / n_b)``): the rule most verdicts here are written in."""
    (ma, sa), (mb, sb) = mean_std(better), mean_std(worse)
    se = float(np.sqrt(sa ** 2 / len(better) + sb ** 2 / len(worse)))
    return {"difference": ma - mb, "pooled_se": se, "factor": factor,
            "holds": bool(ma - mb > factor * se)}


def as_runs(results: list[dict], metrics: list[str]) -> dict[str, list]:
    """The results as ``opd_jax.plot`` runs, grouped by arm (``eval/<metric>`` series)."""
    from opd_jax.plot import Run
    out: dict[str, list] = {}
    for r in results:
        steps = np.array([e["step"] for e in r["evals"]], float)
        series = {f"eval/{m}": (steps, np.array([e[m] for e in r["evals"]], float))
                  for m in metrics if all(m in e for e in r["evals"])}
        flops = (steps, np.array([e["flops"] for e in r["evals"]], float))
        out.setdefault(r["arm"], []).append(Run(f"{r['arm']}/seed{r['seed']}", "", series, flops))
    return out


def figure(results: list[dict], metrics: list[str], out: str, *, x: str = "step",
           title: str | None = None) -> str:
    """A PNG of the metrics against steps (or FLOPs), each arm's mean +- std over its seeds."""
    from opd_jax.plot import curves
    return curves(as_runs(results, metrics), [f"eval/{m}" for m in metrics], out=out, x=x,
                  title=title)
