"""Multi-host training and restoring onto other meshes, with real processes.

Two processes of the command line (4 fake CPU devices each) join through
``jax.distributed.initialize`` on loopback, each reading its own slice of every batch of
prompts, and end where one process with 8 devices ends, with the same held-out evaluation and
the same export of the student (gathered from both processes, written by process 0). The
teacher is loaded from a Hugging Face directory: it is never saved with the run and its files
are never modified. A checkpoint
written on one mesh restores bit-exactly onto another (data=8 → data=2, fsdp=2, tensor=2).
"""

import dataclasses
import json
import os
import socket
import subprocess

import jax
import numpy as np
import pytest
from flax import nnx

from cli_helpers import (EXPERIMENT, REPO, check_ok, child_env, cli_args,
                         digest, max_abs_diff, metrics, read_state, reproducible, run_cli, steps)
from opd_jax.config import apply_overrides, load_experiment
from opd_jax.models import Transformer, from_pretrained, save_pretrained, tiny_config
from opd_jax.training.checkpoint import Checkpointer
from opd_jax.training.loop import Trainer

pytestmark = pytest.mark.slow

N = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(work, sets, log_dir) -> None:
    port, procs = _free_port(), []
    try:
        for i in range(2):
            extra = ["--coordinator", f"localhost:{port}", "--num-processes", "2",
                     "--process-id", str(i)]
            log = open(log_dir / f"host{i}.log", "w")
            procs.append(subprocess.Popen(cli_args(work, *sets, extra=extra), cwd=REPO, text=True,
                                          stdout=log, stderr=subprocess.STDOUT,
                                          env=child_env(devices=4)))
        codes = [p.wait(timeout=400) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    logs = [(log_dir / f"host{i}.log").read_text()[-4000:] for i in range(2)]
    assert codes == [0, 0], f"exit codes {codes}\n" + "\n".join(logs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A teacher saved as an HF directory; one run on 1 process x 8 devices, one on 2 x 4."""
    root = tmp_path_factory.mktemp("multihost")
    teacher = root / "teacher_hf"
    cfg = tiny_config(vocab_size=32, hidden_size=48, num_layers=2)  # tiny_opd's teacher
    save_pretrained(Transformer(cfg, rngs=nnx.Rngs(1)), teacher)
    before = digest(teacher)
    held_out = root / "held_out.jsonl"
    rng = np.random.default_rng(3)
    held_out.write_text("".join(json.dumps({"prompt_ids": rng.integers(2, 32, 4).tolist()}) + "\n"
                                for _ in range(6)))
    sets = [f"run.steps={N}", "ckpt.every=2", f"teacher.model.path={teacher}",
            f"eval.path={held_out}", "eval.k=2"]  # tiny_opd's reward_fn scores the answers
    one, two = root / "one_process", root / "two_processes"
    check_ok(run_cli(one, *sets, devices=8))
    _two_processes(two, sets, root)
    return {"teacher": teacher, "teacher_digest": before, "one": one, "two": two, "sets": sets}


def test_two_processes_match_one(runs):
    one, two = read_state(runs["one"], N), read_state(runs["two"], N)
    for k in ("step", "cursor", "key"):  # same step count, data position and random stream
        np.testing.assert_array_equal(one[k], two[k])
    assert int(two["cursor"]) == N * 8
    diff = max_abs_diff(one["params"], two["params"])
    assert diff < 1e-5, diff  # cross-process reductions may sum in another order
    m1, m2 = reproducible(metrics(runs["one"])[-1]), reproducible(metrics(runs["two"])[-1])
    assert m1.keys() == m2.keys() and m1["step"] == m2["step"] == N
    np.testing.assert_allclose([m2[k] for k in m1], [m1[k] for k in m1], rtol=1e-4, atol=1e-5)
    assert steps(runs["two"]) == [2, 4]
    assert (runs["two"] / "config.json").exists()
    assert len(metrics(runs["two"])) == N  # one writer: process 0
    evals = [json.loads((runs[r] / "eval" / f"{N}.json").read_text()) for r in ("one", "two")]
    assert evals[0].keys() == evals[1].keys() and "reverse_kl" in evals[0]
    for name, value in evals[0].items():
        assert evals[1][name] == (pytest.approx(value, rel=1e-4, abs=1e-5)
                                  if isinstance(value, float) else value), name
    for run in ("one", "two"):  # the export: the run's final parameters
        assert os.listdir(runs[run] / "hf") == [f"step_{N}"]
        exported = nnx.split(from_pretrained(str(runs[run] / "hf" / f"step_{N}")), nnx.Param)[1]
        saved = jax.tree.map(lambda x: x["value"], read_state(runs[run], N)["params"],
                             is_leaf=lambda x: isinstance(x, dict) and set(x) == {"value"})
        assert max_abs_diff(nnx.to_pure_dict(exported), saved) == 0.0


def test_model_teacher_is_read_only_and_never_saved(runs):
    assert digest(runs["teacher"]) == runs["teacher_digest"]  # contents and mtimes
    for work in (runs["one"], runs["two"]):
        for step in steps(work):
            items = sorted(os.listdir(work / "checkpoints" / str(step)))
            assert "teacher" not in items, items
        params = read_state(work, N)["params"]
        assert params["embed"]["value"].shape == (32, 32)  # the student's, hidden 32 (teacher 48)


def _trainer(workdir, sets, **mesh):
    sets = [s for s in sets if not s.startswith("eval.")]  # restoring needs no evaluation
    exp = apply_overrides(load_experiment(str(REPO / EXPERIMENT)),
                          [*sets, f"run.workdir={workdir}"])
    data = dataclasses.replace(exp.data, path=str(workdir / "prompts.jsonl"))
    return Trainer(dataclasses.replace(exp, data=data, mesh=dataclasses.replace(exp.mesh, **mesh)))


def test_restore_onto_a_different_mesh(runs):
    trainer = _trainer(runs["one"], runs["sets"], data=2, fsdp=2, tensor=2)
    assert dict(trainer.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    for work in (runs["one"], runs["two"]):  # saved by 1 process (data=8) and by 2 (data=4 each)
        trainer.ckpt = Checkpointer(str(work / "checkpoints"))
        assert trainer.restore()
        restored = jax.device_get(trainer.state)
        want = read_state(work, N)
        got = [np.asarray(x) for x in jax.tree.leaves((restored.params, restored.opt_state))]
        ref = [np.asarray(x) for x in jax.tree.leaves((want["params"], want["opt_state"]))]
        assert len(got) == len(ref) and [a.shape for a in got] == [b.shape for b in ref]
        assert all(a.tobytes() == b.tobytes() for a, b in zip(got, ref))
        for k in ("step", "cursor", "key"):
            np.testing.assert_array_equal(getattr(restored, k), want[k])
        q = trainer.state.params["layers"]["q"][...]
        assert q.sharding.mesh.shape == trainer.mesh.shape and not q.sharding.is_fully_replicated
