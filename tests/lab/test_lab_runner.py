"""The lab's experiment runner: arms over seeds through the Trainer, results kept and reused,
a changed arm refused under its old name, and the statistics its verdicts are written in."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tiny_lab

import opd_jax.objectives as O
from opd_jax.lab import runner as R


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return tiny_lab.build(tmp_path_factory.mktemp("lab"))


SCHEDULE = R.Schedule(every=2, problems=4, k=2)


def test_arms_run_over_seeds_and_their_results_are_reused(lab, tmp_path, monkeypatch):
    arms = [R.Arm("rkl", O.GKDConfig(beta=1.0), steps=3, prompts=2, samples=2, lr=1e-2),
            R.Arm("seqkd", O.SFTConfig(), source="teacher", steps=3, prompts=2, samples=2, lr=1e-2),
            R.Arm("data", O.SFTConfig(), source="data", teacher="self", steps=3, prompts=2, lr=1e-2)]
    out = str(tmp_path / "out")
    results = (R.run_all(arms[:1], lab, [0, 1], out=out, schedule=SCHEDULE, log=None)
               + R.run_all(arms[1:], lab, [0], out=out, schedule=SCHEDULE, log=None))
    assert [(r["arm"], r["seed"]) for r in results] == [("rkl", 0), ("rkl", 1), ("seqkd", 0), ("data", 0)]
    for r in results:
        assert [e["step"] for e in r["evals"]] == [0, 2, 3]
        assert r["evals"][0]["flops"] == 0 and r["evals"][-1]["flops"] > r["evals"][1]["flops"] > 0
        assert 0 <= r["evals"][-1]["pass@1"] <= 1 and r["evals"][0]["reverse_kl"] >= 0
        assert r["commit"] and r["command"]
        saved = json.load(open(os.path.join(out, r["arm"], f"seed{r['seed']}.json")))
        assert saved["evals"] == r["evals"]
    # One start, one evaluation seed: every arm begins from the same measured student.
    assert len({json.dumps(r["evals"][0], sort_keys=True) for r in results}) == 1
    # Seeds differ once training has run.
    a0, a1 = (r["evals"][-1]["reverse_kl"] for r in results[:2])
    assert a0 != a1
    monkeypatch.setattr(R, "run", lambda *a, **k: pytest.fail("a stored run was trained again"))
    assert R.run_all(arms[:1], lab, [0, 1], out=out, schedule=SCHEDULE, log=None) == results[:2]
    changed = [R.Arm("rkl", O.GKDConfig(beta=1.0), steps=3, prompts=2, samples=2, lr=3e-2)]
    with pytest.raises(ValueError, match="another configuration of arm 'rkl'"):
        R.run_all(changed, lab, [0], out=out, schedule=SCHEDULE, log=None)
    png = R.figure(results, ["pass@1", "reverse_kl"], str(tmp_path / "fig.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_evaluation_before_training_is_computed_once_per_start(lab, tmp_path, monkeypatch):
    """Arms and seeds from one start share its step-0 evaluation (computed once in a process);
    another start gets its own, and a fresh computation gives the shared one."""
    from opd_jax.lab import evaluate as LE
    calls, real = [], LE.evaluate
    monkeypatch.setattr(LE, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(R, "_EVALUATED", {})
    weak = R.Arm("weak", O.GKDConfig(beta=1.0), steps=2, prompts=2, samples=2, lr=1e-2)
    other = dataclasses.replace(weak, name="other", student="teacher")
    run = lambda arm, seed, out: R.run_all([arm], lab, [seed], out=str(tmp_path / out), schedule=SCHEDULE,  # noqa: E731
                                           log=None)[0]["evals"]
    a0, a1 = run(weak, 0, "a"), run(weak, 1, "a")
    assert len(calls) == 3  # steps 0 and 2 of seed 0, step 2 of seed 1
    assert a0[0] == a1[0] and a0[-1] != a1[-1]
    b0 = run(other, 0, "b")
    assert len(calls) == 5 and b0[0] != a0[0]
    monkeypatch.setattr(R, "_EVALUATED", {})
    assert run(weak, 1, "c")[0] == a1[0] and len(calls) == 7


def test_an_arm_whose_batch_steps_skip_the_evaluations_is_refused(lab, tmp_path):
    arm = R.Arm("reuse3", O.OPDConfig(surrogate="ppo"), steps=6, prompts=2, samples=2,
                overrides=("loop.epochs=3",))  # steps 3, 6: never a multiple of every=2
    with pytest.raises(ValueError, match=r"arm 'reuse3': its batches train 3 optimizer steps each"):
        R.run_all([arm], lab, [0], out=str(tmp_path / "out"), schedule=SCHEDULE, log=None)


def test_policy_gradient_arms_must_train_on_the_students_own_samples():
    with pytest.raises(ValueError, match="policy gradient"):
        R.Arm("bad", O.OPDConfig(), source="teacher")
    with pytest.raises(ValueError, match="source must be one of"):
        R.Arm("bad", O.SFTConfig(), source="elsewhere")


def test_values_and_the_gap_rule():
    results = [{"arm": a, "seed": s, "evals": [{"step": 0, "m": 0.0}, {"step": 5, "m": v}]}
               for a, vs in {"a": [0.5, 0.7, 0.6], "b": [0.1, 0.3, 0.2]}.items() for s, v in enumerate(vs)]
    assert R.values(results, "m") == {"a": [0.5, 0.7, 0.6], "b": [0.1, 0.3, 0.2]}
    assert R.values(results, "m", step=0) == {"a": [0.0] * 3, "b": [0.0] * 3}
    g = R.gap([0.5, 0.7, 0.6], [0.1, 0.3, 0.2])
    se = np.sqrt(0.1 ** 2 / 3 + 0.1 ** 2 / 3)  # both sample standard deviations are 0.1
    assert g["difference"] == pytest.approx(0.4) and g["pooled_se"] == pytest.approx(se)
    assert g["holds"] and not R.gap([0.5, 0.7, 0.6], [0.1, 0.3, 0.2], factor=0.4 / se + 0.01)["holds"]
    assert R.mean_std([1.0]) == (1.0, 0.0)
