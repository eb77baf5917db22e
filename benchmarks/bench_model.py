"""Forward and train-step throughput of opd_jax's Transformer vs the transformers PyTorch model.

Same weights (the PyTorch model is saved and loaded with ``from_pretrained``), same batch, same
CPU, one process. Timed runs alternate ours / PyTorch (A B A B ...) so drift in machine load hits
both alike; the table reports medians in tokens/s and their ratio (ours / PyTorch).

    python benchmarks/bench_model.py            # tiny and ~100M configs
    python benchmarks/bench_model.py --smoke    # a few seconds: tiny config, short batch
    python benchmarks/bench_model.py --dtype bfloat16   # mixed precision on both sides
    python benchmarks/bench_model.py --lora 16          # low-rank adapters: ours against PEFT's

``--lora R``: both sides train rank-R adapters on every projection (scale 2, fresh: B = 0) and
nothing else; ours with ``opd_jax.models.lora`` (gradients of the adapters only, as the trainer
takes them), PyTorch's with PEFT's ``get_peft_model`` (its frozen weights need no gradient).

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
slow to touch again, a cost neither pays in a training loop of its own. ``--order processes``
runs each side alone in fresh processes, alternating (ours, PyTorch, ours, ...; ``--rounds``
each), each timing its forward's and then its train step's reps back to back after a warm-up:
each side as in a training loop of its own, with drift across processes hitting both alike.
Each child loads the same saved checkpoint; its forward's logits come back for the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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

from opd_jax.models import count_params, from_pretrained, lora  # noqa: E402
from opd_jax.training.step import trainable  # noqa: E402
from benchmarks.common import CONFIGS, command_line, sizes, time_call  # noqa: E402

LR = 1e-5


def build(name: str, workdir: str, dtype: str = "float32", rank: int = 0):
    """The PyTorch reference model and ours, holding identical float32 weights (ours computing
    in ``dtype``); with ``rank``, each with fresh adapters of that rank."""
    theirs, path = reference(name, workdir)
    return with_adapters(theirs, rank), ours_model(path, dtype, rank)


def ours_model(path: str, dtype: str, rank: int):
    model = from_pretrained(path, param_dtype="float32", dtype=dtype)
    return lora.attach(model, rank=rank, alpha=2.0 * rank) if rank else model


def with_adapters(theirs, rank: int):
    """``theirs`` with PEFT's LoRA of ``rank`` on every projection (the rest frozen), or as it is."""
    if not rank:
        return theirs
    import peft
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return peft.get_peft_model(theirs, peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                       target_modules=targets))


def reference(name: str, workdir: str):
    """The PyTorch model of config ``name`` (seeded), saved as a checkpoint in ``workdir``; and its path."""
    cfg = transformers.AutoConfig.for_model("qwen3", **CONFIGS[name])
    torch.manual_seed(0)
    theirs = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    path = os.path.join(workdir, name)
    theirs.save_pretrained(path)
    return theirs, path


def jax_fns(model):
    """Jitted forward and train step (next-token cross-entropy, AdamW) over split parameters.
    A model with adapters trains only them: ``train_step(trained, opt_state, tokens, positions,
    frozen=)`` with ``trained, frozen = trainable(params)``."""
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adamw(LR)

    @jax.jit
    def forward(params, tokens, positions):
        return nnx.merge(graphdef, params)(tokens, positions)[0]

    def loss_fn(trained, frozen, tokens, positions):
        params = trained if frozen is None else nnx.merge_state(trained, frozen)
        logits = forward(params, tokens, positions)[:, :-1].astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    @jax.jit(donate_argnums=(0, 1))  # as opd_jax's Trainer: the old state's buffers hold the new one
    def train_step(trained, opt_state, tokens, positions, frozen=None):
        loss, grads = jax.value_and_grad(loss_fn)(trained, frozen, tokens, positions)
        updates, opt_state = tx.update(grads, opt_state, trained)
        return optax.apply_updates(trained, updates), opt_state, loss

    # Committed to the parameters' device: optax's step count starts as an uncommitted scalar, and
    # the first step's committed output would make the second call compile the step again.
    opt_state = jax.device_put(tx.init(trainable(params)[0]), jax.tree.leaves(params)[0].sharding)
    return params, opt_state, forward, train_step


def batch_of(name: str, batch: int, seq: int) -> np.ndarray:
    """The benchmark's token batch ``[batch, seq]`` (seeded: the same in every process)."""
    return np.random.RandomState(0).randint(0, CONFIGS[name]["vocab_size"], (batch, seq))


def ours_side(ours, tokens_np):
    """Our timed forward and donated train step on ``tokens_np``, and our forward's float32 logits."""
    batch, seq = tokens_np.shape
    tokens, positions = jnp.asarray(tokens_np, jnp.int32), jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    params, opt_state, forward, train_step = jax_fns(ours)
    trained, frozen = trainable(params)
    state = {"params": trained, "opt": opt_state}

    def ours_forward():
        forward(params, tokens, positions).block_until_ready()

    def ours_train():
        state["params"], state["opt"], loss = train_step(state["params"], state["opt"], tokens, positions,
                                                         frozen=frozen)
        loss.block_until_ready()

    return ours_forward, ours_train, np.asarray(forward(params, tokens, positions).astype(jnp.float32))


def torch_side(theirs, tokens_np, autocast: bool):
    """PyTorch's timed forward and train step (AdamW), under bf16 autocast if ``autocast``; and
    its float32 logits with, under autocast, its autocast logits (else the float32 ones again)."""
    tokens_pt = torch.tensor(tokens_np, dtype=torch.long)
    torch_opt = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=LR)

    def torch_forward():
        if theirs.training:  # dropout is 0 either way; mode only affects bookkeeping (switched untimed,
            theirs.eval()  # in each phase's warm-up call)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            theirs(input_ids=tokens_pt, use_cache=False).logits

    def torch_train():
        if not theirs.training:
            theirs.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = theirs(input_ids=tokens_pt, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens_pt[:, 1:].reshape(-1))
        loss.backward()
        torch_opt.step()
        torch_opt.zero_grad(set_to_none=True)

    theirs.eval()
    with torch.no_grad():
        ref = theirs(input_ids=tokens_pt, use_cache=False).logits.numpy()
        low = ref  # float32: PyTorch's own forward is the reference
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = theirs(input_ids=tokens_pt, use_cache=False).logits.float().numpy()
    return torch_forward, torch_train, (ref, low)


def timed(fns, order: str, reps: int) -> list[list[float]]:
    """Seconds per call of each callable in ``fns`` after one warm-up call each (compiles ours,
    warms PyTorch's allocator): alternating A B A B, or in blocks (A x reps, B x reps, twice)."""
    for f in fns:
        f()
    times = [[] for _ in fns]
    if order == "alternating":
        for _ in range(reps):
            for t, f in zip(times, fns):
                t.append(time_call(f))
    else:
        for _ in range(2):
            for t, f in zip(times, fns):
                t += [time_call(f) for _ in range(reps)]
    return times


def row(name, n_params, batch, seq, phase, times_a, times_b, logits, ref, low) -> dict:
    tps_a, tps_b = batch * seq / statistics.median(times_a), batch * seq / statistics.median(times_b)
    return dict(config=name, params=n_params, shape=f"{batch}x{seq}", phase=phase, ours=tps_a, torch=tps_b,
                ratio=tps_a / tps_b, max_diff=float(np.abs(logits - ref).max()),
                torch_diff=float(np.abs(low - ref).max()), each_a=times_a, each_b=times_b)


def bench_config(name: str, batch: int, seq: int, reps: int, workdir: str, dtype: str = "float32",
                 order: str = "alternating", rank: int = 0) -> list[dict]:
    theirs, ours = build(name, workdir, dtype, rank)
    tokens_np = batch_of(name, batch, seq)
    # Same weights, same batch: the forward passes must agree before timing means anything.
    ours_forward, ours_train, logits = ours_side(ours, tokens_np)
    torch_forward, torch_train, (ref, low) = torch_side(theirs, tokens_np, dtype != "float32")
    rows = []
    for phase, a, b in [("forward", ours_forward, torch_forward), ("train step", ours_train, torch_train)]:
        times_a, times_b = timed([a, b], order, reps)
        rows.append(row(name, count_params(ours), batch, seq, phase, times_a, times_b, logits, ref, low))
    return rows


def child(side: str, name: str, path: str, batch: int, seq: int, reps: int, dtype: str, logits_to: str | None,
          rank: int = 0):
    """One side alone in this process: its forward's reps, then its train step's, back to back
    (``timed`` in blocks of one side); the logits go to ``logits_to`` (.npz) if given."""
    tokens_np = batch_of(name, batch, seq)
    if side == "ours":
        model = ours_model(path, dtype, rank)
        forward, train, logits = ours_side(model, tokens_np)
        saved, n_params = dict(logits=logits), count_params(model)
    else:
        model = with_adapters(transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa"), rank)
        forward, train, (ref, low) = torch_side(model, tokens_np, dtype != "float32")
        saved, n_params = dict(ref=ref, low=low), None
    if logits_to:
        np.savez(logits_to, **saved)
    (forward_s,), (train_s,) = timed([forward], "blocks", reps), timed([train], "blocks", reps)
    return dict(params=n_params, forward=statistics.median(forward_s), train=statistics.median(train_s))


def in_processes(name: str, batch: int, seq: int, reps: int, rounds: int, workdir: str, dtype: str,
                 rank: int = 0) -> list[dict]:
    """Each side in fresh processes, alternating (ours, PyTorch, ours, ...), ``rounds`` each: per
    phase the median over processes of each one's median."""
    path = reference(name, workdir)[1]  # the checkpoint both sides load
    results = {"ours": [], "torch": []}
    for r in range(rounds):
        for side in results:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", side, "--configs", name, "--batch", str(batch),
                   "--seq", str(seq), "--reps", str(reps), "--dtype", dtype, "--path", path, "--lora", str(rank)]
            if r == 0:
                cmd += ["--logits-to", os.path.join(workdir, f"{name}-{side}.npz")]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[side].append(json.loads(out.strip().splitlines()[-1]))
    logits = np.load(os.path.join(workdir, f"{name}-ours.npz"))["logits"]
    theirs = np.load(os.path.join(workdir, f"{name}-torch.npz"))
    return [row(name, results["ours"][0]["params"], batch, seq, phase, [r[key] for r in results["ours"]],
                [r[key] for r in results["torch"]], logits, theirs["ref"], theirs["low"])
            for phase, key in [("forward", "forward"), ("train step", "train")]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run: tiny config, 2x16 batch, 3 reps")
    parser.add_argument("--configs", default="tiny,100m", help=f"comma-separated subset of {sorted(CONFIGS)}")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="compute dtype of both sides (bfloat16: float32 weights, bf16 products)")
    parser.add_argument("--order", default="alternating", choices=("alternating", "blocks", "processes"),
                        help="alternating: A B A B (the default); blocks: each side's reps back to back "
                             "(A x reps, B x reps, twice), as each runs in a training loop of its own; "
                             "processes: each side alone in fresh processes, alternating, --rounds each")
    parser.add_argument("--rounds", type=int, default=3, help="--order processes: processes per side")
    parser.add_argument("--lora", type=int, default=0, metavar="R",
                        help="train rank-R adapters on every projection instead of every weight (0: off)")
    parser.add_argument("--child", choices=("ours", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--logits-to", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    host_memory.keep_freed_memory()  # before JAX's CPU client exists; applies to both sides
    names, batch, seq, reps = sizes(parser, args)
    rounds = 1 if args.smoke else args.rounds
    if rounds < 1:
        parser.error(f"--rounds must be >= 1, got {rounds}")
    if args.lora < 0:
        parser.error(f"--lora must be >= 0, got {args.lora}")
    if args.child:
        print(json.dumps(child(args.child, names[0], args.path, batch, seq, reps, args.dtype, args.logits_to,
                               args.lora)))
        return

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            rows += (in_processes(name, batch, seq, reps, rounds, workdir, args.dtype, args.lora)
                     if args.order == "processes"
                     else bench_config(name, batch, seq, reps, workdir, args.dtype, args.order, args.lora))

    print(f"\ncommand: {command_line()}")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
          f"{os.cpu_count()} CPUs; "
          + {"alternating": f"medians of {reps} alternating runs; ",
             "blocks": f"medians of {2 * reps} runs in blocks ({reps} of ours, {reps} of PyTorch's, twice); ",
             "processes": f"each side alone in {rounds} fresh processes, alternating, each timing {2 * reps} runs "
                          f"after a warm-up; medians of the processes' medians [each process, tok/s]; ",
             }[args.order]
          + f"host memory: {host_memory.in_effect()}; "
          + (f"train step: rank-{args.lora} adapters on every projection (ours; PEFT {_peft_version()}); "
             if args.lora else "")
          + ("float32\n" if args.dtype == "float32" else
             "bf16 compute (ours: float32 weights, bf16 products; PyTorch: float32 model under bf16 autocast)\n"))
    diff_cols = ("| max logit diff |" if args.dtype == "float32" else
                 "| max logit diff vs PyTorch float32: ours | PyTorch autocast |")
    print(f"| config | params | batch x seq | phase | opd_jax tok/s | PyTorch tok/s | ratio {diff_cols}")
    print("|---|---|---|---|---|---|---|---|" + ("" if args.dtype == "float32" else "---|"))
    for r in rows:
        diffs = f"{r['max_diff']:.1e} |" + ("" if args.dtype == "float32" else f" {r['torch_diff']:.1e} |")
        a, b = (each(r[k], batch * seq) if args.order == "processes" else "" for k in ("each_a", "each_b"))
        print(f"| {r['config']} | {r['params'] / 1e6:.1f}M | {r['shape']} | {r['phase']} | {r['ours']:,.0f}{a} | "
              f"{r['torch']:,.0f}{b} | {r['ratio']:.2f} | {diffs}")


def _peft_version() -> str:
    import peft
    return peft.__version__


def each(seconds: list[float], tokens: int) -> str:
    """Each process's tokens/s, in brackets."""
    return " [" + ", ".join(f"{tokens / s:,.0f}" for s in seconds) + "]"


if __name__ == "__main__":
    main()
