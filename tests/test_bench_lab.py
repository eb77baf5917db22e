"""``benchmarks/bench_lab.py`` in smoke mode on a lab built here: every phase's worker runs in
its own process and the table has a row per variant and a column per phase."""

import os

from benchmark_scripts import load
from flax import nnx

from opd_jax.export import export
from opd_jax.lab import countdown as C
from opd_jax.lab import dataset
from opd_jax.lab import tokenizer as T
from opd_jax.models import Transformer, load_tokenizer, tiny_config


def test_smoke_run_times_the_opd_iteration_and_the_evaluation(tmp_path, capsys):
    data = str(tmp_path / "data")
    dataset.build(data, difficulty=C.Difficulty(count=3, max_number=9, max_target=40), train=24, test=4)
    tok = load_tokenizer(os.path.join(data, "tokenizer"))
    paths = {}
    for name, (width, seed) in {"teacher": (32, 1), "student": (16, 2)}.items():
        cfg = tiny_config("llama", vocab_size=T.vocab_size(), hidden_size=width, intermediate_size=2 * width,
                          num_layers=1, num_heads=2, num_kv_heads=2, head_dim=width // 2)
        paths[name] = export(Transformer(cfg, rngs=nnx.Rngs(seed)), str(tmp_path / name), tokenizer=tok)
    load("bench_lab").main(["--student", paths["student"], "--teacher", paths["teacher"], "--data", data,
                            "--variants", "now", "--phases", "opd,eval", "--smoke"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "1 steps / 1 evaluations of 8 problems" in lines[0]
    assert "OPD iteration" in lines[1] and "evaluation" in lines[1]
    assert lines[2].startswith("now") and lines[2].count(" ms") == 2
