"""Exact resume after SIGKILL, with real processes of the command line.

A run killed at seeded random points (after some step, in the middle of a checkpoint save while
Orbax's temporary directory is half written, and during start-up) and then resumed until done
ends bitwise identical to a run that was never interrupted: parameters, optimizer state, PRNG
key, data cursor, and the metrics of every step, including each step that was executed twice.
The half-written checkpoint is never the one restored, and a metrics record cut short by a kill
is dropped rather than corrupting the log.
"""

import random
import signal
import time

import pytest

from cli_helpers import (assert_bitwise_equal, check_ok, metrics, popen_cli, read_state, read_tree,
                         reproducible, run_cli, steps)
from opd_jax.training.checkpoint import SAVE_DELAY_ENV

pytestmark = pytest.mark.slow

N = 6
SETS = [f"run.steps={N}", "ckpt.every=1", "ckpt.keep=2"]
SAVE_DELAY = 1.0  # seconds every save of the killed runs stays unfinished


def _wait(cond, proc, timeout=120.0, what=""):
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.01)


def _logged(work) -> int:
    """Complete records in metrics.jsonl (the run may be writing one right now)."""
    try:
        return (work / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _tmp_dirs(work, since: float = 0.0) -> list[str]:
    """Unfinished checkpoints (Orbax temporary directories) created after ``since``."""
    d = work / "checkpoints"
    if not d.exists():
        return []
    out = []
    for p in d.iterdir():
        try:
            if "tmp" in p.name and p.stat().st_ctime >= since:
                out.append(p.name)
        except FileNotFoundError:  # removed meanwhile
            pass
    return sorted(out)


def _kill_once(work, mode: str, rng: random.Random, log) -> dict:
    """Start the run, SIGKILL it at a point chosen by ``mode`` and ``rng``; what was left."""
    before, start = _logged(work), time.time() - 0.01
    proc = popen_cli(work, *SETS, env={SAVE_DELAY_ENV: str(SAVE_DELAY)}, log=log)
    try:
        if mode == "after_step":  # anywhere in the steps after this run's second one
            _wait(lambda: _logged(work) >= before + 2, proc, what="two steps")
            time.sleep(rng.uniform(0.0, SAVE_DELAY))
        elif mode == "mid_save":  # while a checkpoint this run started is half written
            _wait(lambda: _tmp_dirs(work, since=start), proc, what="a save")
            time.sleep(rng.uniform(0.0, SAVE_DELAY / 2))
        else:  # anywhere in start-up: imports, model building, compilation, restore
            time.sleep(rng.uniform(0.5, 3.0))
        assert proc.poll() is None, f"the run finished before the {mode} kill"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return {"mode": mode, "finished": steps(work), "unfinished": _tmp_dirs(work, since=start),
            "logged": _logged(work)}


def test_sigkill_at_random_points_then_resume_is_bitwise_exact(tmp_path):
    ref = tmp_path / "uninterrupted"
    check_ok(run_cli(ref, *SETS))
    want = read_state(ref, N)
    want_metrics = {m["step"]: reproducible(m) for m in metrics(ref)}
    assert sorted(want_metrics) == list(range(1, N + 1))

    work, rng = tmp_path / "killed", random.Random(20240607)
    with open(tmp_path / "killed.log", "w") as log:
        kills = [_kill_once(work, mode, rng, log) for mode in ("after_step", "mid_save", "startup")]
    mid, last = kills[1], kills[-1]
    assert mid["unfinished"], f"the mid-save kill found no unfinished checkpoint: {kills}"
    half_written = int(mid["unfinished"][0].split(".")[0])
    assert half_written not in mid["finished"], kills  # never listed as a checkpoint
    assert last["finished"] and last["finished"][-1] < N, kills  # the resume below restores

    with open(work / "metrics.jsonl", "a") as f:  # as if a kill had cut a record short
        f.write('{"step": 3, "loss/tot')
    check_ok(run_cli(work, *SETS))  # resume until done
    assert_bitwise_equal(read_state(work, N), want)
    logged = metrics(work)
    resumed_at = last["finished"][-1]
    assert [m["step"] for m in logged[last["logged"]:]] == list(range(resumed_at + 1, N + 1))
    for m in logged:  # every step, also those repeated after a kill, reproduces the reference
        assert reproducible(m) == want_metrics[m["step"]], m["step"]
    assert len(logged) > N, "no step was executed twice: the kills interrupted no work"
    assert _tmp_dirs(work) == [], "a half-written checkpoint was left behind after the resume"


def test_resume_restores_the_ema_teacher_and_the_data_source_draws(tmp_path):
    """An EMA teacher (its own saved copy) and GKD's per-step random choice of data source
    (lmbda=0.5, teacher samples on off-policy steps): stopped at step 2, resumed to 4, equal to
    4 steps in one go."""
    sets = ["objective=gkd", "teacher.kind=ema", "teacher.ema_decay=0.5", "loop.lmbda=0.5",
            "loop.seq_kd=true", "ckpt.every=1", "ckpt.keep=5"]
    ref, work = tmp_path / "uninterrupted", tmp_path / "resumed"
    check_ok(run_cli(ref, *sets, "run.steps=4"))
    check_ok(run_cli(work, *sets, "run.steps=2"))
    check_ok(run_cli(work, *sets, "run.steps=4"))
    sources = [m["source/on_policy"] for m in metrics(ref)]
    assert 0.0 < sum(sources) < len(sources), sources  # both kinds of step occur
    for step in (2, 4):
        for item in ("state", "teacher"):
            assert_bitwise_equal(read_tree(work / "checkpoints" / str(step) / item),
                                 read_tree(ref / "checkpoints" / str(step) / item))
    assert [reproducible(m) for m in metrics(work)] == [reproducible(m) for m in metrics(ref)]
