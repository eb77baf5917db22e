"""``benchmarks/bench_lookahead.py`` in smoke mode: both branch forms agree (checked inside), and a
row per timed call, each with its rounds and its ratio to the plain teacher scoring."""

from benchmark_scripts import load


def test_smoke_run_times_lookahead_scoring_beside_the_plain_teacher(capsys):
    load("bench_lookahead").main(["--smoke"])
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r[0].strip("| ") for r in rows] == [
        "teacher scoring", "look-ahead scoring", "look-ahead scoring, recorded top-k", "sampling",
        "sampling, recording top-k", "branches, tree attention", "branches, a row per branch"]
    for r in rows:
        assert float(r[1]) >= 0 and len(r[2].split(", ")) == 2
    assert float(rows[0][3].strip(" |")) == 1.0
    assert "2 branch points x 2 candidates per row" in out
