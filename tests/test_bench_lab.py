"""``benchmarks/bench_lab.py`` in smoke mode on a lab built here: every phase's worker runs in
its own process and the table has a row per variant and a column per phase."""

import tiny_lab
from benchmark_scripts import load


def test_smoke_run_times_the_opd_iteration_and_the_evaluation(tmp_path, capsys):
    lab = tiny_lab.build(tmp_path)
    load("bench_lab").main(["--student", lab.models["weak"], "--teacher", lab.models["teacher"],
                            "--data", lab.data, "--variants", "now", "--phases", "opd,eval", "--smoke"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "1 steps / 1 evaluations of 8 problems" in lines[0]
    assert "OPD iteration" in lines[1] and "evaluation" in lines[1]
    assert lines[2].startswith("now") and lines[2].count(" ms") == 2
