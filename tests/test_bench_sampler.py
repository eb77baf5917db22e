"""The sampler benchmark's smoke run prints both tables; its Tunix peer (when installed) is fed
the benchmark's prompts unchanged and decodes what our sampler decodes."""

import numpy as np
import pytest
from benchmark_scripts import load as _module


def test_the_id_tokenizer_round_trips_and_pad_rows_are_the_rows_holding_the_pad_id():
    peer = _module("tunix_peer")
    tok = peer.IdTokenizer(pad_id=0, eos_id=99)
    assert tok.encode(tok.decode([5, 17, 3])) == [5, 17, 3]
    assert tok.bos_id() is None and (tok.pad_id(), tok.eos_id()) == (0, 99)
    rows = peer.pad_rows(np.array([[1, 2, 3], [4, 0, 5], [0, 0, 0]]), pad_id=0)
    assert rows.tolist() == [False, True, True]


@pytest.mark.slow
def test_smoke_run_prints_both_tables(capsys):
    pytest.importorskip("torch")
    _module("bench_sampler").main(["--smoke", "--no-tunix", "--cpu-devices", "1"])
    out = capsys.readouterr().out
    assert "| config | params | batch | opd_jax tok/s | PyTorch generate tok/s |" in out
    assert "| config | batch | opd_jax compile s | Tunix compile s |" in out
    assert "| 8/8 | 100.0% |" in out  # greedy float32: the same tokens as PyTorch
    assert "left out (--no-tunix)" in out


@pytest.mark.slow
def test_peer_dtype_runs_ours_in_bf16_beside_float32_peers_and_frozen(capsys):
    pytest.importorskip("torch")
    _module("bench_sampler").main(["--smoke", "--no-tunix", "--cpu-devices", "1", "--dtype", "bfloat16",
                                   "--peer-dtype", "float32", "--frozen"])
    out = capsys.readouterr().out
    assert "alternating runs; bfloat16 (our KV cache float32) (PyTorch and Tunix: float32);" in out
    frozen = [line.split(" | ") for line in out.split("freeze s |")[-1].splitlines() if line.startswith("| tiny |")]
    assert [r[1] for r in frozen] == ["1", "8"] and float(frozen[0][-1].rstrip(" |")) > 0, out  # freeze s
    rows = [line for line in out.splitlines() if line.startswith("| tiny | 0.")]
    assert len(rows) == 2, out  # --smoke's batches: 1 and 8


@pytest.mark.slow
def test_tunix_peer_decodes_what_our_sampler_decodes(tmp_path):
    """Oracle for the peer's wiring (prompts, padding, length, rope): on the same float32
    checkpoint, greedy, Tunix's tokens equal ours in every row that never emits the pad id."""
    peer = _module("tunix_peer")
    if peer.available():
        pytest.skip(peer.available())
    import jax
    from flax import nnx

    from opd_jax.sampling import SamplerConfig, sample

    common = _module("common")
    cfg = common.CONFIGS["tiny"]
    _, model = _module("bench_sampler").build("tiny", str(tmp_path))  # the benchmark's checkpoint
    tokens, mask = common.prompts(8, 16, cfg["vocab_size"])
    graphdef, params = nnx.split(model, nnx.Param)
    ours = sample(graphdef, params, tokens, mask, jax.random.key(0),
                  cfg=SamplerConfig(max_new_tokens=24, temperature=0.0, pad_id=common.PAD,
                                      new_token_buckets=(24,)))
    ours = np.asarray(ours.tokens)[:, 16:]
    with jax.numpy_rank_promotion("allow"):  # Tunix's code relies on implicit rank promotion
        theirs = peer.TunixSampler(str(tmp_path / "tiny"), cfg, "float32", common.PAD, 16, 24)(tokens, mask)
    assert theirs.shape == ours.shape == (8, 24)
    clean = ~(peer.pad_rows(ours, common.PAD) | peer.pad_rows(theirs, common.PAD))
    assert clean.sum() >= 4 and (theirs[clean] == ours[clean]).all()


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [False, True])
def test_cold_start_child_times_our_sampler_in_a_fresh_process(tmp_path, frozen):
    """The cold-start benchmark's child for our side (the Tunix side needs Tunix): spawned as the
    parent spawns it, it loads the checkpoint (and with ``--frozen`` freezes it), samples three
    times and reports its times; with the persistent compilation cache off in the child, its
    first call compiles, so it is the slower."""
    pytest.importorskip("torch")
    cold = _module("cold_start")
    path = cold.write_checkpoint("tiny", str(tmp_path))
    got = cold.spawn("opd_jax", path, "tiny", 2, prompt_len=8, new_tokens=4, frozen=frozen)
    assert got["run"] > 0 and got["load"] > 0 and got["to_first"] > got["load"]
    assert (got["freeze"] > 0) == frozen and got["freeze"] < got["load"]
    assert got["compile"] > 5 * got["run"]  # a tiny model's program compiles in ~1 s, runs in ~ms
    # JAX's own account of that compile: the sampling program (and the key's seeding) traced, lowered, compiled
    assert got["programs"] >= 1 and min(got["trace"], got["lower"], got["xla"]) > 0
    assert got["jax_compile"] == pytest.approx(got["trace"] + got["lower"] + got["xla"])
    assert got["xla"] < got["jax_compile"] < got["to_first"] - got["load"]  # all of it inside the first call


@pytest.mark.slow
def test_sampler_compile_smoke_compares_opt_levels(capsys):
    """``sampler_compile.py`` compiles every (phases, LLVM level) setting afresh and prints a row
    for each: the program (loops, products) does not depend on the level, only its compile. With
    ``--interleave`` a second table pairs each setting's calls with the first setting's."""
    pytest.importorskip("torch")
    _module("sampler_compile").main(["--configs", "tiny", "--batch", "2", "--phases", "auto,1",
                                     "--opt-levels", "default,1,default", "--reps", "1", "--interleave", "3"])
    out = capsys.readouterr().out
    table, paired = out.split("Decode, interleaved: 3 rounds")
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| tiny |")]
    pairs = [line.split(" | ") for line in paired.splitlines() if line.startswith("| tiny |")]
    assert [r[1:3] for r in pairs] == [r[1:3] for r in rows]  # every setting, in the same order
    assert float(pairs[0][5].rstrip(" |")) == 1.0 and all(float(p[3]) > 0 for p in pairs)
    assert [(r[1], r[2]) for r in rows] == [(p, level) for p in ("auto", "1") for level in ("default", "1", "default")]
    assert all(float(r[5]) > 0.01 for r in rows)  # XLA compiled each, the repeated ones too: no cache hit
    loops = {phases: {r[7] for r in rows if r[1] == phases} for phases in ("auto", "1")}  # while loops
    assert len(loops["auto"]) == 1 == len(loops["1"]) and loops["auto"] != loops["1"], loops
    ynn = {phases: {int(r[9]) for r in rows if r[1] == phases} for phases in ("auto", "1")}  # YNNPACK calls
    assert len(ynn["auto"]) == 1 == len(ynn["1"]), ynn  # the same fusions at every LLVM level
