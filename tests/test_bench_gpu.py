"""The GPU benchmark's bandwidth bound counts the right bytes, and its smoke run works on CPU."""

import jax
import numpy as np
import pytest
from flax import nnx

from benchmark_scripts import load

from opd_jax.models import Transformer, tiny_config


@pytest.mark.parametrize("tied,dtype", [(False, "float32"), (True, "bfloat16")])
def test_weight_bytes_are_the_matrices_a_decode_step_reads(tied, dtype):
    """Every matrix once (the input embedding only as the tied LM head); norms are negligible
    and not counted."""
    cfg = tiny_config(tie_word_embeddings=tied, param_dtype=dtype)
    params = nnx.state(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    read = sum(np.prod(v.shape) for k, v in flat.items()
               if "norm" not in k and (tied or "embed" not in k))
    assert load("bench_gpu").weight_bytes(cfg) == read * np.dtype(dtype).itemsize


@pytest.mark.slow
def test_smoke_run_prints_every_table(capsys):
    pytest.importorskip("torch")
    load("bench_gpu").main(["--smoke"])
    out = capsys.readouterr().out
    for head in ("| ceiling |", "| model | params | batch |", "| phase | s | model TFLOP/s | MFU |"):
        assert head in out
