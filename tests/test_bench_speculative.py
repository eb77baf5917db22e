"""``benchmarks/bench_speculative.py`` in smoke mode: every call answers with HF's plain greedy text,
and ours and HF's assisted generation see the same acceptance (tokens per teacher forward)."""

from benchmark_scripts import load


def test_smoke_run_compares_speculative_sampling_with_hf_assisted_generation(capsys):
    load("bench_speculative").main(["--smoke"])
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    assert [r[0] for r in rows] == ["ours plain", "ours speculative", "HF plain", "HF assisted",
                                    "ours speculative, one batch"]
    assert all(r[5] == "2/2" for r in rows)  # greedy: the teacher's own text everywhere
    per_forward = {r[0]: r[4] for r in rows}
    assert per_forward["ours speculative"] == per_forward["HF assisted"] == per_forward["ours speculative, one batch"]
    assert 1.0 < float(per_forward["ours speculative"]) <= 5.0
    assert float(rows[3][3]) == 1.0
