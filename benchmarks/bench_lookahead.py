"""What LGR's look-ahead scoring costs beside a plain teacher scoring, and what tree attention saves.

    python benchmarks/bench_lookahead.py                         # the 100m model, 4 rows x 256 tokens
    python benchmarks/bench_lookahead.py --config tiny --rows 16 --tokens 512
    python benchmarks/bench_lookahead.py --smoke

``objective=lgr`` scores each batch with :func:`opd_jax.teachers.lookahead.lookahead_scores`: a
student forward (entropy and top-k at every completion position), then one teacher forward with
the ``M x K`` candidates appended to each row as one-token branches (tree attention,
:func:`opd_jax.models.branches.branch_hidden`), which also gives the teacher's usual scores.
Timed per batch, alternating (A B A B, medians over rounds), all compiled beforehand:

- ``teacher scoring``: the plain teacher's completion hidden states (what every other objective
  pays, ``opd_jax.teachers.local.score_hidden``), the reference of the ratios;
- ``look-ahead scoring``: the whole of ``lookahead_scores`` (student forward, tree-attention
  teacher forward, confidences, rewards);
- ``look-ahead scoring, recorded top-k``: the same when the sampler recorded the student's
  entropy and top-k (``SamplerConfig.record_topk``, what the trainer asks for under lgr): no
  student forward;
- ``sampling`` and ``sampling, recording top-k``: the student sampling the batch's completions
  (the prompt columns, then ``tokens - prompt`` new tokens, temperature 1, no EOS) without and
  with that recording: what the recording costs where it is paid.
- ``branches, tree attention``: the teacher's branch forward alone (``branch_hidden``);
- ``branches, a row per branch``: the same branch states without tree attention, each candidate
  written into its own copy of the row (``B x M x K`` rows; causal attention ignores the columns
  after it), the way a stack without a tree mask would get them.

The models are random weights of ``--config``'s shape (the same for student and teacher), so the
timings do not depend on what the candidates are.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import CONFIGS, alternate, command_line, print_rounds  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="100m", choices=sorted(CONFIGS))
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256, help="prompt + completion tokens per row")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens per row")
    parser.add_argument("--branch-points", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 rounds (the test suite's)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.config, args.rows, args.tokens, args.prompt, args.rounds = "tiny", 2, 24, 8, 2
        args.branch_points, args.k = 2, 2
    from flax import nnx

    import opd_jax.objectives as O
    from opd_jax.models import Transformer
    from opd_jax.models.branches import branch_hidden
    from opd_jax.models.config import ModelConfig
    from opd_jax.sampling import SamplerConfig, sample
    from opd_jax.teachers.local import score_hidden
    from opd_jax.teachers.lookahead import lookahead_scores
    from opd_jax.training.batch import Sequences

    hf = dict(CONFIGS[args.config], model_type="qwen3", architectures=["Qwen3ForCausalLM"],
              max_position_embeddings=args.tokens + 8)
    graphdef, params = nnx.split(Transformer(ModelConfig.from_hf(hf), rngs=nnx.Rngs(0)), nnx.Param)
    B, W, n, M, K = args.rows, args.tokens, args.tokens - args.prompt, args.branch_points, args.k
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, hf["vocab_size"], (B, W)).astype(np.int32)
    mask = np.ones((B, W), bool)
    seq = Sequences.from_left_padded(jnp.asarray(tokens), jnp.asarray(mask))
    loss_mask = jnp.ones((B, n), bool)
    cfg = O.LGRConfig(k=K, branch_points=M, min_entropy=0.0)
    cols = jnp.asarray(np.stack([np.sort(rng.choice(np.arange(W - n, W), M, replace=False))
                                 for _ in range(B)]), jnp.int32)
    cands = jnp.asarray(rng.integers(1, hf["vocab_size"], (B, M, K)), jnp.int32)

    def tree(p):
        _, h = branch_hidden(nnx.merge(graphdef, p), seq.tokens, seq.positions, seq.mask, cols, cands)
        return h

    def per_row(p):  # each candidate in its own copy of the row
        rows = jnp.repeat(seq.tokens, M * K, axis=0)
        col = jnp.repeat(cols, K, axis=1).reshape(-1)
        rows = rows.at[jnp.arange(B * M * K), col].set(cands.reshape(-1))
        h, _ = nnx.merge(graphdef, p).hidden(rows, jnp.repeat(seq.positions, M * K, axis=0),
                                             mask=jnp.repeat(seq.mask, M * K, axis=0))
        return h[jnp.arange(B * M * K), col].reshape(B, M, K, -1)

    tree_j, per_row_j = jax.jit(tree), jax.jit(per_row)
    recorded = (jnp.asarray(rng.random((B, n)), jnp.float32),
                jnp.asarray(rng.integers(1, hf["vocab_size"], (B, n, K)), jnp.int32))
    sampler = SamplerConfig(max_new_tokens=n, pad_id=0)
    prompts, prompt_mask, key = tokens[:, :args.prompt], mask[:, :args.prompt], jax.random.key(0)
    calls = {
        "teacher scoring": lambda: score_hidden(graphdef, params, seq, n, 1),
        "look-ahead scoring": lambda: lookahead_scores(graphdef, params, graphdef, params, seq, seq,
                                                       loss_mask, 1, cfg),
        "look-ahead scoring, recorded top-k": lambda: lookahead_scores(
            graphdef, params, graphdef, params, seq, seq, loss_mask, 1, cfg, recorded),
        "sampling": lambda: sample(graphdef, params, prompts, prompt_mask, key, cfg=sampler),
        "sampling, recording top-k": lambda: sample(graphdef, params, prompts, prompt_mask, key,
                                                    cfg=sampler.replace(record_topk=K)),
        "branches, tree attention": lambda: tree_j(params),
        "branches, a row per branch": lambda: per_row_j(params),
    }
    for call in calls.values():  # compile
        jax.block_until_ready(call())
    np.testing.assert_allclose(np.asarray(tree_j(params), np.float32), np.asarray(per_row_j(params), np.float32),
                               atol=2e-3, rtol=2e-3)
    times = alternate({key: (lambda c=c: jax.block_until_ready(c())) for key, c in calls.items()}, args.rounds)
    print(f"command: {command_line()}")
    print(f"jax {jax.__version__} ({jax.default_backend()}), {os.cpu_count()} CPUs; {args.config} model "
          f"(student and teacher), {B} rows x {W} tokens ({n} completion), {M} branch points x {K} "
          f"candidates per row; medians of {args.rounds} alternating rounds")
    print_rounds(times, "teacher scoring", digits=2)

if __name__ == "__main__":
    main()
