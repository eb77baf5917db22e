"""What training only low-rank adapters saves: the student's trained parameters, its gradients
and AdamW's moments, and the arrays of each checkpoint, full training against adapters of each
rank, for the shipped Qwen3 shapes.

    python benchmarks/lora_state.py                          # qwen3-0.6b, 1.7b, 8b; ranks 8, 32, 128
    python benchmarks/lora_state.py --configs qwen3-8b --ranks 16

Counted from the train state itself (``jax.eval_shape`` of the trainer's ``init_state`` with the
experiments' optimizer, float32 master weights and moments): nothing is allocated, so it runs
on any machine in seconds. The gradients are as large as what trains. Activations, the frozen
weights and the teacher are the same either way and are left out of those columns. A checkpoint
holds what ``Checkpointer.save_train`` keeps of the state (with adapters: everything but the
frozen base weights), counted as array bytes (Orbax adds its small metadata files).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

import opd_jax.objectives as O  # noqa: E402
from opd_jax.models import Transformer, lora, named_config  # noqa: E402
from opd_jax.training.checkpoint import split_base  # noqa: E402
from opd_jax.training.config import OptimConfig  # noqa: E402
from opd_jax.training.optim import make_optimizer  # noqa: E402
from opd_jax.training.step import init_state, trainable  # noqa: E402


def state_bytes(cfg, rank: int) -> dict:
    def build():
        model = Transformer(cfg, rngs=nnx.Rngs(0))
        return nnx.split(lora.attach(model, rank=rank, alpha=2.0 * rank) if rank else model, nnx.Param)[1]
    params = jax.eval_shape(build)
    tx = make_optimizer(OptimConfig(lr=1e-5), 100)
    state = jax.eval_shape(lambda p: init_state(p, tx, O.build_objective(O.OPDConfig()), 0), params)
    size = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    trained = trainable(params)[0]
    return {"trained": sum(x.size for x in jax.tree.leaves(trained)), "grads": size(trained),
            "moments": size(state.opt_state), "all": sum(x.size for x in jax.tree.leaves(params)),
            "checkpoint": size(split_base(state)[0])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="qwen3-0.6b,qwen3-1.7b,qwen3-8b")
    parser.add_argument("--ranks", default="8,32,128")
    args = parser.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]
    if any(r < 1 for r in ranks):
        parser.error(f"--ranks must be >= 1, got {args.ranks}")
    print(f"command: python benchmarks/lora_state.py --configs {args.configs} --ranks {args.ranks}")
    print("\n| config | trained | trained parameters | gradients GB | AdamW moments GB | both, of full training "
          "| checkpoint GB |")
    print("|---|---|---|---|---|---|---|")
    gb = 1e9
    for name in args.configs.split(","):
        cfg = named_config(name, param_dtype="float32")
        full = state_bytes(cfg, 0)
        rows = [("everything", full)] + [(f"adapters, rank {r}", state_bytes(cfg, r)) for r in ranks]
        for label, b in rows:
            share = (b["grads"] + b["moments"]) / (full["grads"] + full["moments"])
            print(f"| {name} | {label} | {b['trained'] / 1e6:,.1f}M of {b['all'] / 1e6:,.0f}M | "
                  f"{b['grads'] / gb:.2f} | {b['moments'] / gb:.2f} | {share:.1%} | {b['checkpoint'] / gb:.2f} |")


if __name__ == "__main__":
    main()
