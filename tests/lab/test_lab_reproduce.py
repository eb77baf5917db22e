"""Every other lab experiment through ``opd_jax.lab.reproduce`` in smoke mode (the same code path
as quick and full: the lab's tiny models, 2 steps, one seed; ``test_lab_reproduce_even.py`` runs
the rest), what it stores, and the README table built from stored results."""

import json
import os
import shutil

import pytest

from opd_jax.lab import reproduce as RP
from opd_jax.lab import runner as R
from reproduce_smoke import check_experiment, dirs, records, smoke  # noqa: F401 (fixtures)


@pytest.mark.parametrize("name", RP.NAMES[1::2])  # the others: test_lab_reproduce_even.py
def test_every_experiment_runs_in_smoke_mode_and_stores_its_verdict(name, dirs, records):
    check_experiment(name, dirs, records)


def test_a_second_run_reuses_the_stored_runs(dirs, records, monkeypatch):
    first = smoke("position_weighting", dirs, records)
    monkeypatch.setattr(R, "run", lambda *a, **k: pytest.fail("a stored run was trained again"))
    again = RP.run("position_weighting", "smoke", results=dirs["results"], lab_root=dirs["lab"], log=None)
    assert again["numbers"] == first["numbers"] and again["verdict"] == first["verdict"]


def test_the_readme_table_comes_from_stored_quick_and_full_results_only(dirs, records, tmp_path):
    results = str(tmp_path / "results")
    record = smoke("topk_bias", dirs, records)
    src = os.path.join(dirs["results"], "topk_bias", "smoke")
    shutil.copytree(src, os.path.join(results, "topk_bias", "smoke"))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{RP.BEGIN}\nold table\n{RP.END}\n\nafter\n")
    assert RP.refresh(str(readme), results)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore") and text.endswith("after\n")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(RP.NAMES) and all("not run yet" in row for row in rows)  # smoke never shows
    assert f"0 of {len(RP.NAMES)} experiments run; 0 reproduced, 0 not reproduced, 0 inconclusive." in text
    # A stored quick result fills its row (numbers from the stored record, the figure linked).
    quick = os.path.join(results, "topk_bias", "quick")
    shutil.copytree(src, quick)
    stored = json.load(open(os.path.join(quick, "experiment.json")))
    stored.update(mode="quick", seeds=[0, 1, 2])
    json.dump(stored, open(os.path.join(quick, "experiment.json"), "w"))
    assert RP.refresh(str(readme), results) and not RP.refresh(str(readme), results)
    row = next(r for r in readme.read_text().splitlines() if r.startswith("| `topk_bias`"))
    assert record["verdict"]["summary"].split(";")[0].replace("|", "\\|") in row
    assert "**inconclusive**" in row and "CPU, " in row and "(quick, 3 seeds" in row
    assert "](results/topk_bias/quick/figure_step.png)" in row
    assert "`python -m opd_jax.lab.reproduce topk_bias`" in row
    tally = f"1 of {len(RP.NAMES)} experiments run; 0 reproduced, 0 not reproduced, 1 inconclusive."
    assert tally in readme.read_text()
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no lab table markers"):
        RP.refresh(str(readme), results)


def test_the_command_line(dirs, records, tmp_path, capsys):
    smoke("position_weighting", dirs, records)
    readme = tmp_path / "README.md"
    readme.write_text(f"{RP.BEGIN}\n{RP.END}\n")
    RP.main(["position_weighting", "--mode", "smoke", "--results", dirs["results"], "--lab-root", dirs["lab"],
             "--readme", str(readme)])
    assert "position_weighting (smoke): inconclusive" in capsys.readouterr().out
    RP.main(["--list", "--mode", "smoke", "--results", dirs["results"]])
    out = capsys.readouterr().out
    assert all(name in out for name in RP.NAMES) and "smoke: inconclusive" in out
    with pytest.raises(SystemExit):
        RP.main(["no_such_experiment"])
    with pytest.raises(ValueError, match="unknown mode"):
        RP.run("topk_bias", "medium")


def test_a_changed_regime_is_refused_with_what_to_do(dirs, records, monkeypatch):
    smoke("position_weighting", dirs, records)
    from opd_jax.lab import baseline as BL
    budget = BL.budget("smoke")
    monkeypatch.setitem(BL.BUDGETS, "smoke", type(budget)(**{**vars(budget), "lr": budget.lr / 2}))
    with pytest.raises(ValueError, match="baseline regime .* changed.*move .*position_weighting/smoke aside"):
        RP.run("position_weighting", "smoke", results=dirs["results"], lab_root=dirs["lab"], log=None)
