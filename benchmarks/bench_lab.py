"""The lab's throughput: its SFT step, its OPD iteration and its evaluation, today's code next to an
earlier commit's.

Each measurement runs in its own process (``--worker``) that imports ``opd_jax`` from a source
tree, builds a ``Trainer`` on the lab's models and data, runs a few warm-up steps (compilation),
then times ``--steps`` more and prints the median seconds per step. The evaluation phase
(``--phases eval``) instead times ``--evals`` calls of ``opd_jax.lab.evaluate.evaluate`` of the
student on ``--problems`` held-out problems (greedy, and 8 samples at temperature 1) with the
teacher's token diagnostics, after one warm-up call. The earlier commit runs from
a temporary ``git worktree``; variants of today's code: the same settings, the rows split over
both cores (``--cpu-devices 2``), and bf16 products with float32 accumulation and master weights.
Variants alternate (A B C ... A B C ...); the table gives the medians over ``--reps`` rounds and
the speed-up against the earlier commit.

    python benchmarks/bench_lab.py --student lab/models/weak --teacher lab/models/teacher
    python benchmarks/bench_lab.py --student lab/models/strong --teacher lab/models/teacher \
        --phases eval --variants before,now --before 5d8f806
    python benchmarks/bench_lab.py ... --smoke     # seconds: checks that every variant runs
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEFORE = "ba99b45"  # main at the start of the lab's second part (2026-12-02)
VARIANTS = {  # name -> (source: "before" | "now", cpu devices, compute dtype)
    "before": ("before", 1, "float32"),
    "now": ("now", 1, "float32"),
    "now-2dev": ("now", 2, "float32"),
    "now-bf16": ("now", 1, "bfloat16"),
    "now-2dev-bf16": ("now", 2, "bfloat16"),
}

PHASES = {"sft": "SFT step (64 rows)", "opd": "OPD iteration (16 x 4)",
          "eval": "evaluation (greedy + 8 samples, teacher diagnostics)"}


def worker(a):
    """Time one phase in this process; prints ``{"seconds": median}`` as the last line."""
    import time

    import jax
    if a.devices > 1:
        jax.config.update("jax_num_cpu_devices", a.devices)
    import numpy as np

    import opd_jax.objectives as O
    from opd_jax.models import load_tokenizer
    from opd_jax.sampling import SamplerConfig
    from opd_jax.training.config import (CheckpointConfig, DataConfig, Experiment, LoopConfig,
                                         MeshConfig, ModelSpec, OptimConfig, RunConfig,
                                         TeacherSpec)
    from opd_jax.training.loop import Trainer
    if a.phase == "eval":
        return eval_worker(a)
    sft = a.phase == "sft"
    try:
        ckpt = CheckpointConfig(every=0, keep=1, export=False)
    except TypeError:  # the earlier commit writes no exports
        ckpt = CheckpointConfig(every=0, keep=1)
    teacher = TeacherSpec(kind="self") if sft else TeacherSpec(
        kind="model", model=ModelSpec(path=a.teacher, dtype=a.dtype))
    exp = Experiment(
        student=ModelSpec(path=a.student, dtype=a.dtype), teacher=teacher,
        objective=O.SFTConfig() if sft else O.OPDConfig(), loop=LoopConfig(lmbda=0.0 if sft else 1.0),
        sampler=SamplerConfig(max_new_tokens=32, eos_ids=(2,), pad_id=0, num_samples=1 if sft else 4),
        optim=OptimConfig(lr=1e-4), mesh=MeshConfig(data=a.devices),
        data=DataConfig(path=os.path.join(a.data, "train.jsonl"), batch_size=64 if sft else 16,
                        max_prompt_len=24),
        ckpt=ckpt, run=RunConfig(steps=10 ** 6, workdir=a.workdir, diagnostics_k=0,
                                 tensorboard=False, progress=False))
    trainer = Trainer(exp, tokenizer=load_tokenizer(os.path.join(a.data, "tokenizer")))
    for _ in range(a.warmup):
        trainer.iteration()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        trainer.iteration()
        times.append(time.perf_counter() - t)
    print(json.dumps({"seconds": float(np.median(times))}))


def eval_worker(a):
    """The evaluation phase of :func:`worker`."""
    import time

    import jax
    import numpy as np
    from flax import nnx

    from opd_jax.data import load_examples
    from opd_jax.lab.evaluate import evaluate
    from opd_jax.models import from_pretrained, load_tokenizer
    from opd_jax.sharding import make_mesh
    tok = load_tokenizer(os.path.join(a.data, "tokenizer"))
    test = load_examples(os.path.join(a.data, "test.jsonl"), tokenizer=tok, max_prompt_len=24)[:a.problems]
    mesh = make_mesh(data=a.devices)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    student, teacher = (nnx.split(from_pretrained(p, dtype=a.dtype), nnx.Param) for p in (a.student, a.teacher))
    student, teacher = ((g, jax.device_put(w, replicated)) for g, w in (student, teacher))
    call = lambda: evaluate(*student, test, tok, k=8, mesh=mesh, teacher=teacher)  # noqa: E731
    call()
    times = []
    for _ in range(a.evals):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    print(json.dumps({"seconds": float(np.median(times))}))


def run_variant(source: str, devices: int, dtype: str, phase: str, a, trees: dict) -> float:
    work = tempfile.mkdtemp(prefix="bench_lab_")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--phase", phase, "--student", a.student,
           "--teacher", a.teacher, "--data", a.data, "--devices", str(devices), "--dtype", dtype,
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--workdir", work,
           "--evals", str(a.evals), "--problems", str(a.problems)]
    env = dict(os.environ, PYTHONPATH=trees[source], JAX_PLATFORMS="cpu")
    try:
        out = subprocess.run(cmd, env=env, cwd=trees[source], capture_output=True, text=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if out.returncode:
        raise RuntimeError(f"{source} {phase} ({devices} devices, {dtype}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--data", default=os.path.join("runs", "lab", "data"))
    ap.add_argument("--before", default=BEFORE, help="the earlier commit")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--phases", default="sft,opd", help="comma-separated, of sft, opd and eval")
    ap.add_argument("--evals", type=int, default=3, help="timed evaluations (eval phase)")
    ap.add_argument("--problems", type=int, default=128, help="held-out problems per evaluation (eval phase)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    for name in ("student", "teacher", "data"):
        setattr(a, name, os.path.abspath(getattr(a, name)))
    if a.worker:
        return worker(a)
    if a.smoke:
        a.steps, a.warmup, a.reps, a.evals, a.problems = 1, 1, 1, 1, 8
    names, phases = a.variants.split(","), a.phases.split(",")
    unknown = [n for n in names if n not in VARIANTS] + [p for p in phases if p not in PHASES]
    if unknown:
        ap.error(f"unknown variants or phases {unknown}; known: {list(VARIANTS)}, {list(PHASES)}")
    trees = {"now": ROOT}
    tmp = None
    if any(VARIANTS[n][0] == "before" for n in names):
        tmp = tempfile.mkdtemp(prefix="bench_lab_before_")
        trees["before"] = os.path.join(tmp, "tree")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", trees["before"], a.before],
                       check=True, capture_output=True)
    try:
        times = {(n, p): [] for n in names for p in phases}
        for _ in range(a.reps):
            for phase in phases:
                for n in names:
                    times[(n, phase)].append(run_variant(*VARIANTS[n], phase, a, trees))
    finally:
        if tmp:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", trees["before"]],
                           capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)
    each = ([f"{a.steps} steps"] if set(phases) - {"eval"} else []) + (
        [f"{a.evals} evaluations of {a.problems} problems"] if "eval" in phases else [])
    print(f"lab step times, medians of {a.reps} alternating rounds of {' / '.join(each)} "
          f"(student {os.path.basename(a.student)}, teacher {os.path.basename(a.teacher)})")
    print(f"{'variant':<24}" + "".join(f"{PHASES[p]:>{len(PHASES[p]) + 4}}" for p in phases))
    base = {p: statistics.median(times[("before", p)]) for p in phases if ("before", p) in times}
    for n in names:
        cells = []
        for p in phases:
            t = statistics.median(times[(n, p)])
            ratio = f" ({base[p] / t:.2f}x)" if p in base else ""
            cells.append(f"{t * 1e3:.0f} ms{ratio}".rjust(len(PHASES[p]) + 4))
        print(f"{n:<24}" + "".join(cells))


if __name__ == "__main__":
    main()
