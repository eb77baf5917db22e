"""What the two smoke files of the lab's experiments share (``test_lab_reproduce.py`` runs every
other experiment, ``test_lab_reproduce_even.py`` the rest, so that two test workers share them):
the module's lab and results directories, its smoke records, and the checks of one experiment."""

import json
import os

import pytest

from opd_jax.lab import reproduce as RP
from opd_jax.lab import verdicts as V


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    return {"lab": str(root / "lab"), "results": str(root / "results")}


@pytest.fixture(scope="module")
def records(dirs):
    """Each experiment's smoke record, run once for the module (the experiments share the lab)."""
    return {}


def smoke(name, dirs, records):
    if name not in records:
        records[name] = RP.run(name, "smoke", results=dirs["results"], lab_root=dirs["lab"], log=None)
    return records[name]


def check_experiment(name, dirs, records):
    """Experiment ``name`` runs in smoke mode and stores its runs, figures and verdict."""
    record = smoke(name, dirs, records)
    module = RP.load(name)
    arms, schedule, seeds = RP.plan(module, "smoke")
    out = os.path.join(dirs["results"], name, "smoke")
    assert record["arms"] == [a.name for a in arms] and record["seeds"] == list(seeds) == [0]
    assert json.load(open(os.path.join(out, "experiment.json"))) == json.loads(json.dumps(record))
    for a in arms:  # the raw per-seed runs, with their provenance
        run = json.load(open(os.path.join(out, a.name, "seed0.json")))
        assert run["commit"] and run["command"] and run["hardware"]["platform"] == "cpu"
        assert [e["step"] for e in run["evals"]][0] == 0 and run["evals"][-1]["step"] == a.steps
    for f in record["figures"]:
        assert open(os.path.join(out, f), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # One seed has no spread: every part is unresolved, the verdict inconclusive, and the rule,
    # the parts and their numbers are all in the record.
    v = record["verdict"]
    assert v["verdict"] == V.INCONCLUSIVE and v["rule"] == module.RULE and v["parts"]
    assert all(p["outcome"] == "unresolved" for p in v["parts"])
    shown = RP.figure_metrics(module, schedule)
    assert set(shown) <= set(next(iter(record["numbers"].values())))
    # Every figure metric (the schedule's measures among them) is in every evaluation of every run.
    for a in arms:
        run = json.load(open(os.path.join(out, a.name, "seed0.json")))
        assert all(m in e for e in run["evals"] for m in shown), a.name
