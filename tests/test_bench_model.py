"""The model benchmark's smoke run, in each timing order: a row per phase, with the forward passes
of the two sides agreeing (in-process, or from the logits each side's fresh process saved)."""

import re

import pytest
from benchmark_scripts import load


@pytest.mark.parametrize("order", ["alternating", "blocks", "processes"])
def test_smoke_run_prints_both_phases(capsys, order):
    load("bench_model").main(["--smoke", "--order", order])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "medians of" in line)
    assert ("alternating runs" in header) == (order == "alternating")
    assert ("in blocks (3 of ours, 3 of PyTorch's, twice)" in header) == (order == "blocks")
    assert ("alone in 1 fresh processes" in header) == (order == "processes")
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| tiny |")]
    assert [r[3] for r in rows] == ["forward", "train step"]
    for r in rows:
        ours, theirs = (float(x.split(" [")[0].replace(",", "")) for x in r[4:6])
        assert ours > 0 and theirs > 0
        if order == "processes":  # the one process's own median, in brackets
            assert r[4].endswith(f"[{r[4].split(' [')[0]}]") and r[5].endswith(f"[{r[5].split(' [')[0]}]")
        assert float(r[7].rstrip(" |")) < 1e-4  # max logit difference, float32


def test_our_train_step_compiles_once(tmp_path):
    """The timed calls reuse the warm-up's program: the initial optimizer state is committed to the
    parameters' device like the state every step returns, so the second call does not recompile."""
    pytest.importorskip("torch")
    import jax
    import jax.monitoring
    import jax.numpy as jnp

    bench = load("bench_model")
    _, ours = bench.build("tiny", str(tmp_path))
    params, opt_state, _, train_step = bench.jax_fns(ours)
    tokens = jnp.zeros((1, 8), jnp.int32)
    positions = jnp.arange(8, dtype=jnp.int32)[None]
    params, opt_state, loss = train_step(params, opt_state, tokens, positions)  # compiles
    compiles = []

    def listener(event, seconds, **_):
        if event.endswith("backend_compile_duration"):  # one per XLA compile
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for _ in range(2):
            params, opt_state, loss = train_step(params, opt_state, tokens, positions)
            loss.block_until_ready()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert jnp.isfinite(loss) and compiles == []


def test_step_profile_sums_the_traced_kernels(capsys):
    """``step_profile.py`` on a short tiny batch: the kinds' table adds up to the kernels' sum,
    and the kernels covered at once cannot exceed that sum."""
    load("step_profile").main(["--smoke"])
    out = capsys.readouterr().out
    summed, covered = (float(x) for x in re.search(r"([\d.]+) ms summed .*?([\d.]+) ms covered", out).groups())
    kinds = [float(line.split(" | ")[1].rstrip(" |")) for line in out.splitlines()
             if line.startswith("| ") and not line.startswith(("| kind", "| kernel", "|---"))
             and line.count(" | ") == 1]
    assert kinds and abs(sum(kinds) - summed) < 0.05 * summed + 0.1
    assert 0 < covered <= summed + 0.01
    assert len([line for line in out.splitlines() if line.count(" | ") == 3 and "`" in line]) == 3


def test_scan_residuals_smoke(capsys):
    """Each policy's train step runs in its own process; the losses agree (one computation)."""
    load("scan_residuals").main(["--smoke"])
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny |")]
    assert [r[1] for r in rows] == ["products (default)", "everything", "nothing (remat)"]
    losses = [float(r[6].strip(" |")) for r in rows]
    assert max(losses) - min(losses) < 1e-4, rows


def test_smoke_run_with_adapters_times_ours_against_peft(capsys):
    load("bench_model").main(["--smoke", "--lora", "4"])
    out = capsys.readouterr().out
    assert "train step: rank-4 adapters on every projection (ours; PEFT " in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| tiny |")]
    assert [r[3] for r in rows] == ["forward", "train step"]
    for r in rows:  # fresh adapters (B = 0): both sides still compute the plain model's logits
        assert float(r[4].split(" [")[0].replace(",", "")) > 0 and float(r[7].rstrip(" |")) < 1e-4
