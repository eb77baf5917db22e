"""Forward and train-step throughput of opd_jax's Transformer vs the transformers PyTorch model.

Same weights (the PyTorch model is saved and loaded with ``from_pretrained``), same batch, same
CPU, one process. Timed runs alternate ours / PyTorch (A B A B ...) so drift in machine load hits
both alike; the table reports medians in tokens/s and their ratio (ours / PyTorch).

    python benchmarks/bench_model.py            # tiny and ~100M configs
    python benchmarks/bench_model.py --smoke    # a few seconds: tiny config, short batch
    python benchmarks/bench_model.py --dtype bfloat16   # mixed precision on both sides

``--dtype bfloat16`` is mixed precision as each side does it: ours keeps float32 weights and
optimizer state and computes in bf16 (``from_pretrained(..., dtype="bfloat16")``: bf16 products
with float32 accumulation, the loss in float32); PyTorch runs its float32 model under
``torch.autocast("cpu", dtype=torch.bfloat16)``. The logit difference is then each side's
bf16 forward against PyTorch's float32 one.

Our train step donates its state, as opd_jax's Trainer does. ``$OPD_JAX_HOST_MEMORY`` (see
``opd_jax.host_memory``: ``hugepages`` by default, ``keep`` or ``system``) sets how the C
allocator serves large blocks; it is process-wide, so it applies to both sides, and the header
says which was in force.

``--order blocks`` times each side's reps back to back (ours x reps, PyTorch x reps, twice)
instead of alternating: on a virtual machine whose balloon reports free pages to the host
(``benchmarks/fresh_memory.py``), memory one side frees lies free while the other runs and is
slow to touch again, a cost neither pays in a training loop of its own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compare on the same CPU even where a GPU exists
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opd_jax import host_memory, process  # noqa: E402

if __name__ == "__main__":
    process.relaunch()  # under the host-memory policy's environment, before anything heavy loads

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from opd_jax.models import count_params, from_pretrained  # noqa: E402
from benchmarks.common import CONFIGS, command_line, sizes, time_call  # noqa: E402

LR = 1e-5


def build(name: str, workdir: str, dtype: str = "float32"):
    """The PyTorch reference model and ours, holding identical float32 weights (ours computing
    in ``dtype``)."""
    cfg = transformers.AutoConfig.for_model("qwen3", **CONFIGS[name])
    torch.manual_seed(0)
    theirs = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    path = os.path.join(workdir, name)
    theirs.save_pretrained(path)
    return theirs, from_pretrained(path, param_dtype="float32", dtype=dtype)


def jax_fns(model):
    """Jitted forward and train step (next-token cross-entropy, AdamW) over split parameters."""
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adamw(LR)

    @jax.jit
    def forward(params, tokens, positions):
        return nnx.merge(graphdef, params)(tokens, positions)[0]

    def loss_fn(params, tokens, positions):
        logits = forward(params, tokens, positions)[:, :-1].astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    @jax.jit(donate_argnums=(0, 1))  # as opd_jax's Trainer: the old state's buffers hold the new one
    def train_step(params, opt_state, tokens, positions):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, positions)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # Committed to the parameters' device: optax's step count starts as an uncommitted scalar, and
    # the first step's committed output would make the second call compile the step again.
    opt_state = jax.device_put(tx.init(params), jax.tree.leaves(params)[0].sharding)
    return params, opt_state, forward, train_step


def bench_config(name: str, batch: int, seq: int, reps: int, workdir: str, dtype: str = "float32",
                 order: str = "alternating") -> list[dict]:
    theirs, ours = build(name, workdir, dtype)
    autocast = dtype != "float32"
    tokens_np = np.random.RandomState(0).randint(0, CONFIGS[name]["vocab_size"], (batch, seq))
    tokens, positions = jnp.asarray(tokens_np, jnp.int32), jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    tokens_pt = torch.tensor(tokens_np, dtype=torch.long)
    params, opt_state, forward, train_step = jax_fns(ours)
    torch_opt = torch.optim.AdamW(theirs.parameters(), lr=LR)

    def ours_forward():
        forward(params, tokens, positions).block_until_ready()

    def torch_forward():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            theirs(input_ids=tokens_pt, use_cache=False).logits

    state = {"params": params, "opt": opt_state}

    def ours_train():
        state["params"], state["opt"], loss = train_step(state["params"], state["opt"], tokens, positions)
        loss.block_until_ready()

    def torch_train():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = theirs(input_ids=tokens_pt, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens_pt[:, 1:].reshape(-1))
        loss.backward()
        torch_opt.step()
        torch_opt.zero_grad(set_to_none=True)

    # Same weights, same batch: the forward passes must agree before timing means anything.
    theirs.eval()
    with torch.no_grad():
        ref = theirs(input_ids=tokens_pt, use_cache=False).logits.numpy()
    mine = np.asarray(forward(params, tokens, positions).astype(jnp.float32))
    theirs_low = ref  # float32: PyTorch's own forward is the reference
    if autocast:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            theirs_low = theirs(input_ids=tokens_pt, use_cache=False).logits.float().numpy()
    max_diff, torch_diff = float(np.abs(mine - ref).max()), float(np.abs(theirs_low - ref).max())
    n_params = count_params(ours)
    rows = []
    for phase, a, b in [("forward", ours_forward, torch_forward), ("train step", ours_train, torch_train)]:
        theirs.train(phase != "forward")  # dropout is 0 either way; mode only affects bookkeeping
        a(), b()  # warm-up: compiles ours, warms PyTorch's allocator
        times_a, times_b = [], []
        if order == "alternating":
            for _ in range(reps):
                times_a.append(time_call(a))
                times_b.append(time_call(b))
        else:  # blocks: A x reps, B x reps, twice
            for _ in range(2):
                times_a += [time_call(a) for _ in range(reps)]
                times_b += [time_call(b) for _ in range(reps)]
        tps_a, tps_b = batch * seq / statistics.median(times_a), batch * seq / statistics.median(times_b)
        rows.append(dict(config=name, params=n_params, shape=f"{batch}x{seq}", phase=phase,
                         ours=tps_a, torch=tps_b, ratio=tps_a / tps_b, max_diff=max_diff,
                         torch_diff=torch_diff))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run: tiny config, 2x16 batch, 3 reps")
    parser.add_argument("--configs", default="tiny,100m", help=f"comma-separated subset of {sorted(CONFIGS)}")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="compute dtype of both sides (bfloat16: float32 weights, bf16 products)")
    parser.add_argument("--order", default="alternating", choices=("alternating", "blocks"),
                        help="alternating: A B A B (the default); blocks: each side's reps back to back "
                             "(A x reps, B x reps, twice), as each runs in a training loop of its own")
    args = parser.parse_args(argv)
    host_memory.keep_freed_memory()  # before JAX's CPU client exists; applies to both sides
    names, batch, seq, reps = sizes(parser, args)

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            rows += bench_config(name, batch, seq, reps, workdir, args.dtype, args.order)

    print(f"\ncommand: {command_line()}")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
          f"{os.cpu_count()} CPUs; "
          + (f"medians of {reps} alternating runs; " if args.order == "alternating" else
             f"medians of {2 * reps} runs in blocks ({reps} of ours, {reps} of PyTorch's, twice); ")
          + f"host memory: {host_memory.in_effect()}; "
          + ("float32\n" if args.dtype == "float32" else
             "bf16 compute (ours: float32 weights, bf16 products; PyTorch: float32 model under bf16 autocast)\n"))
    diff_cols = ("| max logit diff |" if args.dtype == "float32" else
                 "| max logit diff vs PyTorch float32: ours | PyTorch autocast |")
    print(f"| config | params | batch x seq | phase | opd_jax tok/s | PyTorch tok/s | ratio {diff_cols}")
    print("|---|---|---|---|---|---|---|---|" + ("" if args.dtype == "float32" else "---|"))
    for r in rows:
        diffs = f"{r['max_diff']:.1e} |" + ("" if args.dtype == "float32" else f" {r['torch_diff']:.1e} |")
        print(f"| {r['config']} | {r['params'] / 1e6:.1f}M | {r['shape']} | {r['phase']} | {r['ours']:,.0f} | "
              f"{r['torch']:,.0f} | {r['ratio']:.2f} | {diffs}")


if __name__ == "__main__":
    main()
