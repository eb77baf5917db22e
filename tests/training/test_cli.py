"""The command line, run for real in subprocesses: an experiment file trains end to end with
overrides that reach the run (``config.json``), a second invocation resumes instead of
restarting, and bad overrides fail with status 2 naming the field before anything is compiled
or written."""

import json

import pytest

from cli_helpers import EXPERIMENT, check_ok, metrics, read_state, run_cli, steps

pytestmark = pytest.mark.slow


def test_cli_trains_with_overrides_then_resumes(tmp_path):
    work = tmp_path / "run"
    sets = ["objective=eopd", "objective.tau=0.9", "optim.lr=3e-3", "run.seed=7",
            "ckpt.every=1", "ckpt.keep=5"]
    check_ok(run_cli(work, *sets, "run.steps=2"))
    cfg = json.loads((work / "config.json").read_text())
    assert cfg["objective"]["_type"] == "EOPDConfig" and cfg["objective"]["tau"] == 0.9
    assert cfg["optim"]["lr"] == 3e-3 and cfg["run"]["seed"] == 7 and cfg["run"]["steps"] == 2
    assert cfg["run"]["workdir"] == str(work)
    assert cfg["data"]["path"] == str(work / "prompts.jsonl")  # written by the experiment file
    assert (work / "prompts.jsonl").read_text().count("\n") == 64
    assert steps(work) == [1, 2]
    info = json.loads((work / "run_info.json").read_text())
    assert info["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1} and info["platform"] == "cpu"
    assert [m["step"] for m in metrics(work)] == [1, 2]
    assert "eopd/gate_open_frac" in metrics(work)[0]  # the objective the run trained with
    first = read_state(work, 2)

    check_ok(run_cli(work, *sets, "run.steps=4"))  # resumes at step 2: steps 3 and 4 only
    assert [m["step"] for m in metrics(work)] == [1, 2, 3, 4]
    assert steps(work) == [1, 2, 3, 4]
    assert json.loads((work / "config.json").read_text())["run"]["steps"] == 4
    state = read_state(work, 4)
    assert int(state["step"]) == 4 and int(state["cursor"]) == 4 * 8  # 8 prompts per step
    assert int(first["cursor"]) == 2 * 8

    again = check_ok(run_cli(work, *sets, "run.steps=4"))  # finished: nothing left to do
    assert [m["step"] for m in metrics(work)] == [1, 2, 3, 4], again.stderr


def test_cpu_devices_splits_the_host_and_the_default_mesh_uses_them(tmp_path):
    check_ok(run_cli(tmp_path / "run", "run.steps=1", extra=("--cpu-devices", "2")))
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["devices"] == 2 and info["mesh"]["data"] == 2
    proc = run_cli(tmp_path / "bad", extra=("--cpu-devices", "0"), timeout=120)
    assert proc.returncode == 2 and "--cpu-devices must be >= 1" in proc.stderr, proc.stderr
    assert not (tmp_path / "bad").exists()



def test_host_memory_setting_trains_when_kept_and_a_bad_value_stops_before_any_write(tmp_path):
    check_ok(run_cli(tmp_path / "kept", "run.steps=1", env={"OPD_JAX_HOST_MEMORY": "keep"}))
    assert [m["step"] for m in metrics(tmp_path / "kept")] == [1]
    proc = run_cli(tmp_path / "bad", env={"OPD_JAX_HOST_MEMORY": "sometimes"}, timeout=120)
    assert proc.returncode == 2 and "OPD_JAX_HOST_MEMORY='sometimes'" in proc.stderr, proc.stderr
    assert not (tmp_path / "bad").exists()

@pytest.mark.parametrize("override,named", [
    ("optim.lrr=1e-3", "optim.lrr"),  # unknown field
    ("optimizer.lr=1e-3", "optimizer.lr"),  # unknown section
    ("optim.lr=fast", "optim.lr"),  # value of the wrong type
    ("optim.lr=-1", "optim.lr"),  # out of range
    ("sampler.top_p=0", "top_p"),
    ("objective=nonexistent", "nonexistent"),  # unknown objective
    ("objective.tauu=0.5", "objective.tauu"),  # a field the (default OPD) objective lacks
    ("run.steps", "run.steps"),  # no value
])
def test_bad_override_fails_before_any_compile_or_write(tmp_path, override, named):
    work = tmp_path / "run"
    proc = run_cli(work, override, env={"JAX_LOG_COMPILES": "1"}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "Compiling" not in proc.stderr, proc.stderr
    assert not work.exists()  # nothing written, not even the work directory


@pytest.mark.parametrize("config,named", [
    ("experiments/no_such_file.py", "no_such_file.py"),
    (EXPERIMENT.replace(":smoke", ":bogus"), "bogus"),
])
def test_bad_experiment_file_or_argument(tmp_path, config, named):
    proc = run_cli(tmp_path / "run", config=config, timeout=120)
    assert proc.returncode == 2 and named in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()
