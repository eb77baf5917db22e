"""Where the time of ``opd_jax.sampling.sample`` goes, next to ``transformers`` ``generate`` on the
same weights (the numbers behind the sampler section of BENCHMARKS.md).

For one model and batch, both systems, runs alternating (A B A B), medians:

- prefill: a run that samples one token (ours: the prompt forward and the decode weights'
  preparation; PyTorch: the prompt forward and its first token);
- decode step: runs of 1 and ``--new-tokens`` tokens, differenced, per token;
- ours only: the decode step with attention replaced by a pass-through (so the difference is
  attention's cost, the cache writes included);
- the step's weight products, each run alone at its shape (``[rows, D] @ [D, F]``, timed in a
  loop): ours as XLA compiles them, PyTorch's ``F.linear`` as its ``nn.Linear`` layers run them.

    python benchmarks/decode_breakdown.py --config 100m --batch 64
    python benchmarks/decode_breakdown.py --smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from opd_jax.models import ModelConfig, ops  # noqa: E402
from opd_jax.sampling import SamplerConfig, sample  # noqa: E402
from benchmarks.bench_sampler import build  # noqa: E402
from benchmarks.common import CONFIGS, PAD, prompts, time_call  # noqa: E402


def runners(theirs, graphdef, params, tokens, mask, new_tokens: int):
    """``{(system, n): run}``: one sampling run of ``n`` new tokens (1 and ``new_tokens``), greedy."""
    tokens_pt, mask_pt = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    out = {}
    for n in (1, new_tokens):
        cfg = SamplerConfig(max_new_tokens=n, temperature=0.0, pad_id=PAD, prompt_buckets=(tokens.shape[1],),
                            new_token_buckets=(new_tokens,))
        gen = transformers.GenerationConfig(max_new_tokens=n, pad_token_id=PAD, eos_token_id=None, use_cache=True,
                                            do_sample=False)
        out["ours", n] = lambda cfg=cfg: jax.block_until_ready(
            sample(graphdef, params, tokens, mask, jax.random.key(0), cfg=cfg))

        def run_theirs(gen=gen):
            with torch.no_grad():
                theirs.generate(input_ids=tokens_pt, attention_mask=mask_pt, generation_config=gen)
        out["torch", n] = run_theirs
    return out


def phase_times(runs: dict, new_tokens: int, reps: int) -> dict:
    """``{system: (prefill s, decode s per token)}``, every run alternating between the systems."""
    for run in runs.values():
        run()  # compile ours, warm PyTorch's allocator
    times = {key: [] for key in runs}
    for _ in range(reps):
        for n in (1, new_tokens):
            for system in ("ours", "torch"):
                if (system, n) in runs:
                    times[system, n].append(time_call(runs[system, n]))
    med = {key: statistics.median(t) for key, t in times.items()}
    return {system: (med[system, 1], (med[system, new_tokens] - med[system, 1]) / (new_tokens - 1))
            for system in ("ours", "torch") if (system, 1) in med}


def product_shapes(cfg: ModelConfig) -> list[tuple[int, int, int]]:
    """``(D_in, D_out, count)`` of one decode step's weight products."""
    D, F = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    L = cfg.num_layers
    return [(D, q, L), (D, kv, 2 * L), (q, D, L), (D, F, 2 * L), (F, D, L), (D, cfg.vocab_size, 1)]


def products(cfg: ModelConfig, rows: int, reps: int = 20) -> tuple[float, float]:
    """Seconds of one decode step's weight products, each timed alone at its shape: (ours, PyTorch's)."""
    ours = theirs = 0.0
    for k, n, count in product_shapes(cfg):
        x = jax.random.normal(jax.random.key(0), (rows, k))
        w = jax.random.normal(jax.random.key(1), (k, n))
        f = jax.jit(lambda x, w: jax.lax.fori_loop(0, reps, lambda i, a: a + (x + a[:, :1] * 1e-9) @ w,
                                                     jnp.zeros((rows, n))))
        jax.block_until_ready(f(x, w))
        x_pt, w_pt = torch.randn(rows, k), torch.randn(n, k)  # nn.Linear's [out, in] weight

        def theirs_loop(x_pt=x_pt, w_pt=w_pt):
            with torch.no_grad():
                for _ in range(reps):  # noqa: B007
                    torch.nn.functional.linear(x_pt, w_pt)
        theirs_loop()
        a, b = [], []
        for _ in range(3):  # alternating
            a.append(time_call(lambda: jax.block_until_ready(f(x, w))) / reps)  # noqa: B023
            b.append(time_call(theirs_loop) / reps)
        ours += statistics.median(a) * count
        theirs += statistics.median(b) * count
    return ours, theirs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="100m", choices=sorted(CONFIGS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="seconds: tiny config, 4 rows, 16 new tokens, 1 rep")
    a = ap.parse_args(argv)
    if a.smoke:
        a.config, a.batch, a.prompt_len, a.new_tokens, a.reps = "tiny", 4, 8, 16, 1
    with tempfile.TemporaryDirectory() as workdir:
        theirs, ours = build(a.config, workdir)
    graphdef, params = nnx.split(ours, nnx.Param)
    tokens, mask = prompts(a.batch, a.prompt_len, ours.cfg.vocab_size)
    runs = runners(theirs, graphdef, params, tokens, mask, a.new_tokens)
    phases = phase_times(runs, a.new_tokens, a.reps)
    attention = ops.cached_attention
    ops.cached_attention = lambda q, k, v, visible: q  # the step without attention (nor cache writes)
    jax.clear_caches()  # the sampler's compiled programs were traced with attention
    try:
        ours_only = {key: run for key, run in runners(theirs, graphdef, params, tokens, mask, a.new_tokens).items()
                     if key[0] == "ours"}
        _, no_attn = phase_times(ours_only, a.new_tokens, a.reps)["ours"]
    finally:
        ops.cached_attention = attention
        jax.clear_caches()
    prod_ours, prod_theirs = products(ours.cfg, a.batch)
    (pre_a, step_a), (pre_b, step_b) = phases["ours"], phases["torch"]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), {os.cpu_count()} CPUs; {a.config}, batch {a.batch}, prompts of {a.prompt_len // 2}.."
          f"{a.prompt_len} tokens, {a.new_tokens} new tokens, greedy, float32, medians of {a.reps} alternating runs\n")
    ms = lambda s: f"{s * 1e3:.1f}" if s >= 0.01 else f"{s * 1e3:.3f}"  # noqa: E731
    print("| part | opd_jax ms | PyTorch ms | PyTorch / opd_jax |\n|---|---|---|---|")
    print(f"| prefill (a run of 1 new token) | {ms(pre_a)} | {ms(pre_b)} | {pre_b / pre_a:.2f} |")
    print(f"| decode step | {ms(step_a)} | {ms(step_b)} | {step_b / step_a:.2f} |")
    print(f"| decode step, attention replaced by a pass-through | {ms(no_attn)} | - | - |")
    print(f"| attention and cache writes (difference) | {ms(step_a - no_attn)} | - | - |")
    print(f"| the step's weight products, each timed alone | {ms(prod_ours)} | {ms(prod_theirs)} | "
          f"{prod_theirs / prod_ours:.2f} |")
    total_a, total_b = pre_a + (a.new_tokens - 1) * step_a, pre_b + (a.new_tokens - 1) * step_b
    print(f"| a run of {a.new_tokens} tokens (prefill + {a.new_tokens - 1} steps) | {ms(total_a)} | {ms(total_b)} | "
          f"{total_b / total_a:.2f} |")


if __name__ == "__main__":
    main()
