"""Curves of runs as PNG files: valid images from the API and the command line, FLOPs on the x
axis accumulated correctly, and clear errors for runs without metrics or unknown metrics."""

import json

import numpy as np
import pytest
from PIL import Image

from opd_jax import plot

PNG = b"\x89PNG\r\n\x1a\n"


def _run(path, *, seed=0, steps=(1, 2, 3, 4), every=1, evals=(2, 4), flops=True, partial=False):
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    with open(path / "metrics.jsonl", "w") as f:
        for s in steps[::every]:
            rec = {"step": s, "loss/total": 1.0 / s + 0.1 * rng.random(), "diag/reverse_kl": 0.5 / s,
                   "diag/student_entropy": 2.0, "diag/overlap_ratio": 0.1 * s, "time/step": 0.2}
            if flops:
                rec.update({"flops/sample": 1.0, "flops/score": 2.0, "flops/update": 3.0 * s})
            f.write(json.dumps(rec) + "\n")
        if partial:
            f.write('{"step": 99, "loss/to')  # a run killed mid-write
    (path / "eval").mkdir()
    for s in evals:
        (path / "eval" / f"{s}.json").write_text(json.dumps(
            {"greedy_pass@1": 0.1 * s, "pass@1": 0.05 * s, "pass@8": 0.2 * s, "problems": 8, "k": 8,
             "model": "x"}))
    return str(path)


def _valid_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 100


def test_curves_of_several_runs_and_seed_bands_are_png(tmp_path):
    a0, a1 = _run(tmp_path / "a0", seed=0), _run(tmp_path / "a1", seed=1, partial=True)
    b = _run(tmp_path / "b", seed=2, steps=(1, 2, 3, 4, 5, 6))
    out = plot.curves({"arm A": [a0, a1], "arm B": [b]}, ["loss/total", "eval/pass@8"],
                      out=str(tmp_path / "figs" / "cmp.png"), x="flops", smooth=0.5, title="t")
    _valid_png(out)
    _valid_png(plot.curves([a0, b], ["diag/reverse_kl"], out=str(tmp_path / "one.png")))
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["cmp.png"]  # no temporaries


def test_load_run_reads_metrics_evals_and_accumulates_flops(tmp_path):
    run = plot.load_run(_run(tmp_path / "r", steps=(2, 4, 6), every=1, partial=True))
    steps, loss = run.metrics["loss/total"]
    assert steps.tolist() == [2, 4, 6] and len(loss) == 3  # the unfinished last line is skipped
    assert "time/step" in run.metrics and "eval/problems" not in run.metrics
    assert run.metrics["eval/pass@8"][1].tolist() == pytest.approx([0.4, 0.8])
    # Logged every 2 steps: each record's FLOPs count for the 2 steps since the previous one.
    per_step = [1 + 2 + 3 * s for s in (2, 4, 6)]
    assert run.flops[1].tolist() == pytest.approx(np.cumsum([2 * f for f in per_step]).tolist())
    assert run.x_of(np.asarray([4.0]), "flops").tolist() == pytest.approx([2 * (9 + 15)])
    assert run.x_of(np.asarray([8.0]), "flops")[0] == pytest.approx(run.flops[1][-1] + 2 * 21)


def test_command_line_writes_training_and_eval_figures(tmp_path, capsys):
    d = _run(tmp_path / "run")
    assert plot.main([d]) == 0
    names = sorted(p.name for p in (tmp_path / "run" / "plots").iterdir())
    assert names == ["eval_flops.png", "eval_step.png", "training_flops.png", "training_step.png"]
    for n in names:
        _valid_png(tmp_path / "run" / "plots" / n)
    out = tmp_path / "cmp"
    assert plot.main([f"A={d},{_run(tmp_path / 'run2', seed=3)}", "--out", str(out), "--x", "step",
                      "--metrics", "loss/total,eval/greedy_pass@1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics_step.png"]
    assert str(out / "metrics_step.png") in capsys.readouterr().out


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(plot.PlotError, match=r"empty: no metrics \(neither metrics\.jsonl"):
        plot.load_run(str(tmp_path / "empty"))
    with pytest.raises(plot.PlotError, match=r"nope: no such run directory"):
        plot.load_run(str(tmp_path / "nope"))
    d = _run(tmp_path / "r")
    with pytest.raises(plot.PlotError, match=r"no run has the metric\(s\) \['loss/totl'\]; "
                                             r"available: \[.*'loss/total'"):
        plot.curves([d], ["loss/totl"], out=str(tmp_path / "x.png"))
    no_flops = _run(tmp_path / "nf", flops=False)
    with pytest.raises(plot.PlotError, match=r"nf: metrics\.jsonl has no flops/sample"):
        plot.curves([no_flops], ["loss/total"], out=str(tmp_path / "x.png"), x="flops")
    assert plot.main([str(tmp_path / "empty")]) == 2
    assert "no metrics" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
