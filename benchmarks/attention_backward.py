"""The train step with attention's hand-written gradient (``opd_jax.models.ops.attention``, which
recomputes the softmax probabilities in its backward pass) vs the same attention differentiated
by JAX (``ops.attention_autodiff``) and vs the hand-written gradient that keeps the probabilities
(``probabilities kept``, opd_jax's until 2026-12-05, written out here): XLA's scratch memory for
the step, and its time, all programs in one process, alternating (A B C A B C ...), medians.

    python benchmarks/attention_backward.py                 # tiny and ~100M, batch 4 x 256
    python benchmarks/attention_backward.py --batch 1 --seq 1024
    python benchmarks/attention_backward.py --smoke         # seconds: tiny, 2 x 16, 3 reps

Each program is traced and compiled with its attention in place (``mock.patch``), then both run
``bench_model.py``'s donated train step (next-token cross-entropy, AdamW) from the same weights.
The loss columns are each program's loss after the last step: the same computation, so equal to
float32 rounding.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from unittest import mock

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opd_jax import host_memory, process  # noqa: E402

if __name__ == "__main__":
    process.relaunch()  # under the host-memory policy's environment, before JAX loads

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from opd_jax.models import ModelConfig, Transformer, ops  # noqa: E402
from benchmarks.bench_model import jax_fns  # noqa: E402
from benchmarks.common import CONFIGS, command_line, sizes, time_call  # noqa: E402


def _kept_fwd(q_BTNH, k_BSKH, v_BSKH, visible_BTS):
    """The forward pass keeping the float32 probabilities ``[B, K, G, T, S]`` for the backward."""
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    q_BKGTH = q_BTNH.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)
    k_BKSH, v_BKSH = k_BSKH.transpose(0, 2, 1, 3), v_BSKH.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkgth,bksh->bkgts", q_BKGTH, k_BKSH, preferred_element_type=jnp.float32) * H ** -0.5
    probs = jax.nn.softmax(jnp.where(visible_BTS[:, None, None], scores, -1e30), axis=-1)
    out_BKGTH = jnp.einsum("bkgts,bksh->bkgth", probs.astype(v_BKSH.dtype), v_BKSH)
    return out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H), (q_BKGTH, k_BKSH, v_BKSH, visible_BTS, probs)


def _kept_bwd(residuals, g_BTNH):
    q_BKGTH, k_BKSH, v_BKSH, visible_BTS, probs = residuals
    B, K, G, T, H = q_BKGTH.shape
    g_BKGTH = g_BTNH.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4)
    dv_BKHS = jnp.einsum("bkgth,bkgts->bkhs", g_BKGTH, probs.astype(v_BKSH.dtype))
    dprobs = jnp.einsum("bkgth,bksh->bkgts", g_BKGTH, v_BKSH, preferred_element_type=jnp.float32)
    dscores = probs * (dprobs - jnp.sum(dprobs * probs, axis=-1, keepdims=True))
    dscores = jnp.where(visible_BTS[:, None, None], dscores, 0.0).astype(q_BKGTH.dtype)
    scale = jnp.asarray(H ** -0.5, q_BKGTH.dtype)
    dq_BKGTH = jnp.einsum("bkgts,bksh->bkgth", dscores, k_BKSH) * scale
    dk_BKHS = jnp.einsum("bkgth,bkgts->bkhs", q_BKGTH, dscores) * scale
    return (dq_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, K * G, H), dk_BKHS.transpose(0, 3, 1, 2),
            dv_BKHS.transpose(0, 3, 1, 2), None)


@jax.custom_vjp
def attention_probabilities_kept(q_BTNH, k_BSKH, v_BSKH, visible_BTS):
    return _kept_fwd(q_BTNH, k_BSKH, v_BSKH, visible_BTS)[0]


attention_probabilities_kept.defvjp(_kept_fwd, _kept_bwd)

VARIANTS = {"hand-written": ops.attention, "autodiff": ops.attention_autodiff,
            "probabilities kept": attention_probabilities_kept}


def bench_config(name: str, batch: int, seq: int, reps: int) -> dict:
    cfg = ModelConfig.from_hf(dict(CONFIGS[name], model_type="qwen3"))
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (batch, seq)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    runs = {}
    for label, attention in VARIANTS.items():
        params, opt, _, step = jax_fns(Transformer(cfg, rngs=nnx.Rngs(0)))
        with mock.patch.object(ops, "attention", attention):  # the model calls ops.attention when traced
            compiled = step.lower(params, opt, tokens, positions).compile()
        params, opt, loss = compiled(params, opt, tokens, positions)  # a first call, untimed
        runs[label] = dict(state=[params, opt, loss], step=compiled, times=[],
                           temp=compiled.memory_analysis().temp_size_in_bytes)

    def call(run):
        params, opt, _ = run["state"]
        run["state"] = list(run["step"](params, opt, tokens, positions))
        jax.block_until_ready(run["state"][2])

    for _ in range(reps):
        for run in runs.values():
            run["times"].append(time_call(lambda: call(run)))
    row = {"config": name, "shape": f"{batch}x{seq}"}
    for label, run in runs.items():
        row[label] = dict(ms=statistics.median(run["times"]) * 1e3, temp_mb=run["temp"] / 2**20,
                          loss=float(run["state"][2]))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,100m", help=f"comma-separated subset of {sorted(CONFIGS)}")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny config, 2 x 16, 3 reps")
    args = parser.parse_args(argv)
    host_memory.keep_freed_memory()  # $OPD_JAX_HOST_MEMORY, before JAX's CPU client exists
    names, batch, seq, reps = sizes(parser, args)
    rows = [bench_config(n, batch, seq, reps) for n in names]

    print(f"\ncommand: {command_line()}")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), {os.cpu_count()} CPUs; float32; medians of "
          f"{reps} alternating train steps; host memory: {host_memory.in_effect()}\n")
    others = list(VARIANTS)[1:]
    print("| config | batch x seq | step ms: hand-written | " + " | ".join(others)
          + " | speed-up over: " + " | ".join(others) + " | XLA scratch MB: hand-written | " + " | ".join(others)
          + " | final loss: hand-written | " + " | ".join(others) + " |")
    print("|---" * (3 + 4 * len(others) + 2) + "|")
    for r in rows:
        runs = [r[label] for label in VARIANTS]
        h = runs[0]
        cells = ([f"{x['ms']:.1f}" for x in runs] + [f"{x['ms'] / h['ms']:.2f}x" for x in runs[1:]]
                 + [f"{x['temp_mb']:.1f}" for x in runs] + [f"{x['loss']:.6f}" for x in runs])
        print(f"| {r['config']} | {r['shape']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
