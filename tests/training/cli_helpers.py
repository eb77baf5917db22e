"""Helpers for the tests that run ``python -m opd_jax.main`` in real subprocesses.

Children run on CPU with an explicit fake-device count, and share the test session's persistent
compilation cache, so a program compiled by one child (or by an earlier session) is loaded,
not recompiled, by the next. Every child trains the same tiny experiment
(``experiments/tiny_opd.py:smoke``), so they mostly compile the same programs.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "experiments/tiny_opd.py:smoke"
NOISY = ("time/", "throughput/")  # wall-clock metrics, never reproducible


def cache_dir() -> str:
    return jax.config.jax_compilation_cache_dir or os.path.join(tempfile.gettempdir(),
                                                                "opd_jax_test_jax_cache")


def child_env(devices: int = 8, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "OPD_JAX_"))}
    # The test process's LLVM level (conftest's 0 unless $XLA_FLAGS named one): children compile
    # as fast, and the programs they share with it share the persistent cache's entries.
    level = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_backend_optimization_level")]
    env.update(XLA_FLAGS=" ".join([*level, f"--xla_force_host_platform_device_count={devices}"]), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=cache_dir(),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env


def cli_args(workdir, *sets: str, config: str = EXPERIMENT, extra=()) -> list[str]:
    cmd = [sys.executable, "-m", "opd_jax.main", "--config", config, "--workdir", str(workdir)]
    for s in ("run.progress=false", *sets):
        cmd += ["--set", s]
    return cmd + list(extra)


def run_cli(workdir, *sets: str, devices: int = 8, env: dict | None = None, timeout: float = 300,
            **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cli_args(workdir, *sets, **kw), cwd=REPO, text=True,
                          capture_output=True, timeout=timeout,
                          env=child_env(devices, **(env or {})))


def popen_cli(workdir, *sets: str, devices: int = 8, env: dict | None = None, log=None, **kw):
    return subprocess.Popen(cli_args(workdir, *sets, **kw), cwd=REPO, text=True,
                            stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env=child_env(devices, **(env or {})))


def check_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return proc


def read_tree(path) -> dict:
    """A checkpoint item as nested dicts of numpy arrays (whatever mesh or processes wrote it)."""
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(os.path.abspath(path))
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ckptr.restore(os.path.abspath(path), args=ocp.args.PyTreeRestore(restore_args=args))


def read_state(workdir, step: int) -> dict:
    return read_tree(Path(workdir) / "checkpoints" / str(step) / "state")


def steps(workdir) -> list[int]:
    d = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def metrics(workdir) -> list[dict]:
    with open(Path(workdir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def reproducible(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(NOISY)}


def leaves(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def assert_bitwise_equal(a, b):
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    diff = [k for k in la if la[k].dtype != lb[k].dtype or la[k].shape != lb[k].shape
            or la[k].tobytes() != lb[k].tobytes()]
    assert not diff, f"{len(diff)} of {len(la)} leaves differ, e.g. {diff[:5]}"


def max_abs_diff(a, b) -> float:
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    return max(float(np.max(np.abs(la[k].astype(np.float64) - lb[k].astype(np.float64))))
               if la[k].size else 0.0 for k in la)


def digest(root) -> dict[str, str]:
    """sha256 of every file under ``root`` (and its mtime), by relative path."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                             p.stat().st_mtime_ns)
    return out
