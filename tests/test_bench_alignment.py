"""``benchmarks/bench_alignment.py`` in smoke mode: two tokenizers trained here, a row per timed
step, each with its rounds and its ratio to the teacher's forward."""

from benchmark_scripts import load


def test_smoke_run_times_each_host_step_beside_the_teacher_forward(capsys):
    load("bench_alignment").main(["--smoke"])
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r[0].strip("| ") for r in rows] == ["align, text cuts", "align, consistent cuts", "spread",
                                               "simct extras", "teacher forward"]
    for r in rows:
        assert float(r[1]) >= 0 and len(r[2].split(", ")) == 2
    assert float(rows[-1][3].strip(" |")) == 1.0
    assert "tokens shared" in out and "(text cuts)" in out and "(consistent cuts)" in out
