"""Where a decode step of ``opd_jax.sampling.sample`` spends its time (the numbers behind the
sampler section of BENCHMARKS.md).

For one model and batch it prints the time per decode step (two runs of the whole sampler, 1 and
``--new-tokens`` new tokens, differenced), the same with attention replaced by a pass-through
(so the difference is attention's cost), and the time the step's weight products take when each
runs alone at its own shape (``[rows, D] @ [D, F]``, timed in a loop): the part no change to the
rest of the step can remove.

    python benchmarks/decode_breakdown.py --config 100m --batch 64
    python benchmarks/decode_breakdown.py --smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from opd_jax.models import ModelConfig, Transformer, ops  # noqa: E402
from opd_jax.sampling import SamplerConfig, sample  # noqa: E402
from benchmarks.common import CONFIGS, PAD, prompts, time_call  # noqa: E402


def model(name: str) -> Transformer:
    c = CONFIGS[name]
    cfg = ModelConfig(architecture="qwen3", qk_norm=True, tie_word_embeddings=True, max_position_embeddings=512,
                      vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                      intermediate_size=c["intermediate_size"], num_layers=c["num_hidden_layers"],
                      num_heads=c["num_attention_heads"], num_kv_heads=c["num_key_value_heads"],
                      head_dim=c["head_dim"])
    return Transformer(cfg, rngs=nnx.Rngs(0))


def step_time(graphdef, params, tokens, mask, new_tokens: int, reps: int) -> tuple[float, float]:
    """(seconds per decode step, seconds of prefill + one step)."""
    def run(n):
        cfg = SamplerConfig(max_new_tokens=n, temperature=0.0, pad_id=PAD, prompt_buckets=(tokens.shape[1],),
                            new_token_buckets=(new_tokens,))
        fn = lambda: jax.block_until_ready(sample(graphdef, params, tokens, mask, jax.random.key(0), cfg=cfg))  # noqa: E731
        fn()
        return statistics.median(time_call(fn) for _ in range(reps))
    first, full = run(1), run(new_tokens)
    return (full - first) / (new_tokens - 1), first


def isolated_products(cfg: ModelConfig, rows: int, reps: int = 20) -> float:
    """Seconds of one decode step's weight products, each timed alone at its shape."""
    D, F = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shapes = [(D, q), (D, kv), (D, kv), (q, D), (D, F), (D, F), (F, D)]
    total = 0.0
    for k, n in shapes + [(D, cfg.vocab_size)]:
        x = jax.random.normal(jax.random.key(0), (rows, k))
        w = jax.random.normal(jax.random.key(1), (k, n))
        f = jax.jit(lambda x, w: jax.lax.fori_loop(0, reps, lambda i, a: a + (x + a[:, :1] * 1e-9) @ w,
                                                     jnp.zeros((rows, n))))
        jax.block_until_ready(f(x, w))
        t = statistics.median(time_call(lambda: jax.block_until_ready(f(x, w))) for _ in range(3)) / reps  # noqa: B023
        total += t * (cfg.num_layers if n != cfg.vocab_size else 1)
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="100m", choices=sorted(CONFIGS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    if a.smoke:
        a.config, a.batch, a.prompt_len, a.new_tokens, a.reps = "tiny", 4, 8, 16, 1
    m = model(a.config)
    graphdef, params = nnx.split(m, nnx.Param)
    tokens, mask = prompts(a.batch, a.prompt_len, m.cfg.vocab_size)
    step, first = step_time(graphdef, params, tokens, mask, a.new_tokens, a.reps)
    attention = ops.cached_attention
    ops.cached_attention = lambda q, k, v, visible: q  # the step without attention
    jax.clear_caches()  # the sampler's compiled programs were traced with attention
    try:
        no_attn, _ = step_time(graphdef, params, tokens, mask, a.new_tokens, a.reps)
    finally:
        ops.cached_attention = attention
        jax.clear_caches()
    products = isolated_products(m.cfg, a.batch)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), {os.cpu_count()} CPUs; {a.config}, batch "
          f"{a.batch}, prompts of {a.prompt_len // 2}..{a.prompt_len} tokens, {a.new_tokens} new tokens, "
          f"greedy, float32, medians of {a.reps}\n")
    print("| part | ms |\n|---|---|")
    print(f"| decode step | {step * 1e3:.3f} |")
    print(f"| decode step, attention replaced by a pass-through | {no_attn * 1e3:.3f} |")
    print(f"| attention (difference) | {(step - no_attn) * 1e3:.3f} |")
    print(f"| the step's weight products, each timed alone | {products * 1e3:.3f} |")
    print(f"| prefill + one step | {first * 1e3:.1f} |")


if __name__ == "__main__":
    main()
