"""The model benchmark's smoke run, in both timing orders: a row per phase, with the forward passes
of the two sides agreeing (the benchmark checks them before it times anything)."""

import pytest
from benchmark_scripts import load


@pytest.mark.parametrize("order", ["alternating", "blocks"])
def test_smoke_run_prints_both_phases(capsys, order):
    load("bench_model").main(["--smoke", "--order", order])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "medians of" in line)
    assert ("alternating runs" in header) == (order == "alternating")
    assert ("in blocks (3 of ours, 3 of PyTorch's, twice)" in header) == (order == "blocks")
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| tiny |")]
    assert [r[3] for r in rows] == ["forward", "train step"]
    for r in rows:
        assert float(r[4].replace(",", "")) > 0 and float(r[5].replace(",", "")) > 0
        assert float(r[7].rstrip(" |")) < 1e-4  # max logit difference, float32
