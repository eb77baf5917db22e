"""One on-policy distillation iteration with the teacher served over HTTP vs the same teacher
held locally, and what the served teacher costs on the wire (bytes per completion token).

Both runs train the same student (tiny random Qwen3-shaped models saved as Hugging Face
checkpoints; nothing is downloaded) with sampled-token OPD on the same prompts. The local run
scores with the teacher on the trainer's own devices (``teacher.kind="model"``); the served run
asks ``python -m opd_jax.serve`` for the teacher's log-probs of each completion token and its
top-k alternatives (``teacher.kind="served"``). Here the server runs on the same machine, so it
competes with the trainer for the same cores: a real deployment gives it its own accelerators.
The third row scores each batch during the previous update (``teacher.served.overlap``, one step
off-policy): its ``s scoring`` is the wait left after the overlap. Runs alternate (A B C A B C
...); medians.

The wire columns come from the served teacher's counters: request and answer bytes (JSON, as
vLLM's ``prompt_logprobs`` answers are shaped) per scored completion token; ``dense f32`` is what
shipping the teacher's full float32 logits would cost instead (``4 V`` bytes per token).

    python benchmarks/bench_served_teacher.py            # batch 8, 32-token prompts, 64 new
    python benchmarks/bench_served_teacher.py --smoke    # seconds
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

VOCAB = 1024
MODELS = {  # (hidden, layers, seed); the teacher is wider and deeper than the student
    "student": (64, 2, 0),
    "teacher": (128, 4, 1),
}


def save_models(workdir: str) -> dict[str, str]:
    from flax import nnx

    from opd_jax.models import Transformer, save_pretrained, tiny_config
    paths = {}
    for name, (hidden, layers, seed) in MODELS.items():
        cfg = tiny_config(vocab_size=VOCAB, hidden_size=hidden, num_layers=layers,
                          intermediate_size=3 * hidden, max_position_embeddings=1024)
        paths[name] = os.path.join(workdir, name)
        save_pretrained(Transformer(cfg, rngs=nnx.Rngs(seed)), paths[name])
    return paths


def start_server(path: str):
    """``python -m opd_jax.serve`` on a free loopback port: ``(process, url)``."""
    proc = subprocess.Popen([sys.executable, "-m", "opd_jax.serve", "--model", path, "--port", "0",
                             "--max-top-k", "64"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for line in proc.stdout:
        if line.startswith("serving "):
            return proc, line.split(" on ")[-1].strip()
    raise RuntimeError(f"the teacher server did not start (exit {proc.wait()})")


def trainer(paths, teacher, prompts_file, a, workdir):
    import opd_jax.objectives as O
    from opd_jax.sampling import SamplerConfig
    from opd_jax.training.config import (DataConfig, Experiment, MeshConfig, ModelSpec,
                                         OptimConfig, RunConfig)
    from opd_jax.training.loop import Trainer
    exp = Experiment(
        student=ModelSpec(path=paths["student"]), teacher=teacher, objective=O.OPDConfig(),
        sampler=SamplerConfig(max_new_tokens=a.new_tokens, pad_id=0, eos_ids=()),
        optim=OptimConfig(lr=1e-5), mesh=MeshConfig(data=1),
        data=DataConfig(path=prompts_file, batch_size=a.batch),
        run=RunConfig(steps=10_000, workdir=workdir, progress=False, tensorboard=False,
                      diagnostics_k=0))
    return Trainer(exp)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--rows-per-request", type=int, default=8)
    ap.add_argument("--api", choices=("openai", "sglang"), default="openai")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    if a.smoke:
        a.batch, a.prompt_len, a.new_tokens, a.reps = 2, 8, 8, 1
    from opd_jax.training.config import ModelSpec, ServedSpec, TeacherSpec
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as workdir:
        paths = save_models(workdir)
        prompts = os.path.join(workdir, "prompts.jsonl")
        with open(prompts, "w") as f:
            for p in rng.integers(2, VOCAB, (4 * a.batch, a.prompt_len)).tolist():
                f.write(json.dumps({"prompt_ids": p}) + "\n")
        server, url = start_server(paths["teacher"])
        try:
            def served(overlap):
                return TeacherSpec(kind="served", served=ServedSpec(
                    url=url, top_k=a.top_k, api=a.api, rows_per_request=a.rows_per_request,
                    overlap=overlap))
            runs = {"local teacher": trainer(paths, TeacherSpec(kind="model", model=ModelSpec(
                        path=paths["teacher"])), prompts, a, os.path.join(workdir, "local")),
                    "served teacher": trainer(paths, served(False), prompts, a,
                                              os.path.join(workdir, "served")),
                    "served, overlapped": trainer(paths, served(True), prompts, a,
                                                  os.path.join(workdir, "overlap"))}
            for t in runs.values():  # warm-up: compile both, and the server
                t.iteration()
            stats = {k: [] for k in runs}
            for _ in range(a.reps):
                for name, t in runs.items():
                    t0 = time.perf_counter()
                    m = t.iteration()
                    stats[name].append({**m, "wall": time.perf_counter() - t0})
        finally:
            server.kill()
            server.wait()
    med = {name: {k: statistics.median(s[k] for s in rows) for k in rows[0]}
           for name, rows in stats.items()}
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"jax {jax.__version__}; {os.cpu_count()} CPUs (server and trainer share them); float32;"
          f" vocabulary {VOCAB}; batch {a.batch}, prompt {a.prompt_len}, {a.new_tokens} new tokens;"
          f" top-k {a.top_k}, api {a.api}, {a.rows_per_request} rows per request; medians of "
          f"{a.reps} alternating runs\n")
    print("| teacher | s / iteration | s scoring | sent B / token | received B / token | "
          "requests | dense f32 B / token |")
    print("|---|---|---|---|---|---|---|")
    for name, m in med.items():
        tokens = m.get("teacher/tokens", 0.0)
        wire = (f"{m['teacher/bytes_sent'] / tokens:,.1f} | "
                f"{m['teacher/bytes_received'] / tokens:,.1f} | {m['teacher/requests']:.0f}"
                if tokens else "0 | 0 | 0")
        print(f"| {name} | {m['wall']:.3f} | {m['time/score']:.3f} | {wire} | {4 * VOCAB:,} |")


if __name__ == "__main__":
    main()
