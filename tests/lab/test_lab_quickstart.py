"""The README's main job, the lab's quickstart, end to end in its smoke mode (a tiny lab trained
first), and its refusals of bad input before anything is trained or written."""

import json
import os

import pytest

from opd_jax.lab import quickstart


def test_quickstart_smoke_prints_the_table_and_writes_results_and_figure(tmp_path, capsys):
    out = tmp_path / "q"
    summary = quickstart.main(["--smoke", "--steps", "2", "--seeds", "2", "--problems", "4",
                               "--out", str(out)])
    printed = capsys.readouterr().out
    for row in ("teacher", "student before", "after OPD", "after the control"):
        assert row in printed
    assert "OPD beats the control on pass@1" in printed
    assert (out / "quickstart.png").stat().st_size > 0
    with open(out / "results.json") as f:
        stored = json.load(f)
    runs = stored["runs"]
    assert sorted((r["arm"], r["seed"]) for r in runs) == [("control", 0), ("control", 1), ("opd", 0), ("opd", 1)]
    for r in runs:
        assert [e["step"] for e in r["evals"]] == [0, 1, 2]  # every max(1, steps // 3) = 1 step
        assert 0.0 <= r["evals"][-1]["pass@1"] <= 1.0 and r["evals"][-1]["reverse_kl"] >= 0.0
    # the control trains on the teacher's samples, the OPD arm on the student's own
    assert {r["arm"]: r["config"]["source"] for r in runs} == {"opd": "student", "control": "teacher"}
    # the printed mean of the OPD arm's last pass@1 is the mean over its seeds
    opd = [r["evals"][-1]["pass@1"] for r in runs if r["arm"] == "opd"]
    line = next(x for x in printed.splitlines() if x.startswith("after OPD"))
    assert f"{sum(opd) / len(opd):.3f} +-" in line
    assert "undecided (fewer than 3 seeds)" in printed  # 2 seeds: the rule needs 3
    assert summary["opd_vs_control"]["difference"] == pytest.approx(
        sum(opd) / 2 - sum(r["evals"][-1]["pass@1"] for r in runs if r["arm"] == "control") / 2)


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--student", "giant"], "invalid choice"),
    (["--cpu-devices", "3"], "--cpu-devices 3 must divide the rows of every batch"),
])
def test_quickstart_refuses_bad_arguments(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        quickstart.main(args + ["--out", str(tmp_path / "q")])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "q")


def test_quickstart_keeps_a_used_output_directory(tmp_path, capsys):
    out = tmp_path / "q"
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        quickstart.main(["--smoke", "--out", str(out)])
    assert e.value.code == 2 and "is not empty" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "{}"


def test_quickstart_names_missing_shipped_models_and_how_to_build_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quickstart.baseline.zoo, "MODELS", str(tmp_path / "none"))
    with pytest.raises(SystemExit) as e:
        quickstart.main(["--student", "weak", "--out", str(tmp_path / "q")])
    assert "python -m opd_jax.lab.zoo build teacher weak" in str(e.value)
    assert not os.path.exists(tmp_path / "q")
