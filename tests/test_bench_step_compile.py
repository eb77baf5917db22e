"""benchmarks/step_compile.py: its option sets, and a one-round run on the shipped lab models."""

import jax
import pytest

from benchmark_scripts import load

step_compile = load("step_compile")


def test_variants_parse_into_typed_option_sets():
    assert step_compile.parse_variants("a=1,b=false; ;c=x,d=TRUE") == [{"a": 1, "b": False}, {}, {"c": "x", "d": True}]
    assert step_compile.label({}) == "(XLA's defaults)"
    with pytest.raises(SystemExit, match="'a' is not name=value"):
        step_compile.parse_variants("a")


def test_one_round_compiles_the_train_step_under_each_option_set(capsys, monkeypatch):
    monkeypatch.setenv("OPD_JAX_COMPILE_CACHE", "off")  # main turns the cache off; restored after
    before = jax.config.jax_enable_compilation_cache
    try:
        rows = step_compile.main(["--rounds", "1", "--runs", "1", "--variants",
                                  "xla_cpu_use_fusion_emitters=true;xla_cpu_use_fusion_emitters=false"])
    finally:
        jax.config.update("jax_enable_compilation_cache", before)
    assert [r["options"] for r in rows] == [{"xla_cpu_use_fusion_emitters": v} for v in (True, False)]
    assert all(r["wall"] > 0 and r["cpu"] > 0 and len(r["walls"]) == 1 and r["step_ms"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "| xla_cpu_use_fusion_emitters=False |" in out and "the lab's OPD train step" in out
