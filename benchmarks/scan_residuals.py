"""What the scanned layers keep for the backward pass: the train step under
``opd_jax.models.transformer.SCAN_SAVED`` (the weight products' outputs; the default) against
keeping everything autodiff keeps and against keeping nothing (full remat), each in a fresh
process, alternating processes (A B C A B C ...), medians of each process's step times.

    python benchmarks/scan_residuals.py                          # ~100M, batch 4 x 256, 2 rounds
    python benchmarks/scan_residuals.py --batch 1 --seq 1024 --dtype bfloat16
    python benchmarks/scan_residuals.py --smoke                  # seconds: tiny, 2 x 16

Fresh processes because a process's step time depends on what else it ran: in one process
alternating two programs with different scratch sizes, the one with more scratch ran up to 1.3x
slower than it does alone. Each child runs ``bench_model.py``'s donated train step (next-token
cross-entropy, AdamW) with the model's layers forced onto the scan (shallow models otherwise
loop in Python, where the policy does not apply).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opd_jax import host_memory, process  # noqa: E402

if __name__ == "__main__":
    process.relaunch()  # under the host-memory policy's environment, before JAX loads

from benchmarks.common import CONFIGS, command_line, sizes, time_call  # noqa: E402

POLICIES = {  # name -> the jax.checkpoint_policies attribute it sets as SCAN_SAVED
    "products (default)": None,
    "everything": "everything_saveable",
    "nothing (remat)": "nothing_saveable",
}


def child(name: str, batch: int, seq: int, reps: int, dtype: str, policy: str | None) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from benchmarks.bench_model import jax_fns
    from opd_jax.models import ModelConfig, Transformer
    from opd_jax.models import transformer

    host_memory.keep_freed_memory()  # $OPD_JAX_HOST_MEMORY, before JAX's CPU client exists
    transformer.LOOP_LAYERS = 0
    if policy is not None:
        transformer.SCAN_SAVED = getattr(jax.checkpoint_policies, policy)
    cfg = ModelConfig.from_hf(dict(CONFIGS[name], model_type="qwen3"), dtype=dtype)
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (batch, seq)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    params, opt, _, step = jax_fns(Transformer(cfg, rngs=nnx.Rngs(0)))
    lowered = step.lower(params, opt, tokens, positions)
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start  # XLA's compile of the step
    state = list(compiled(params, opt, tokens, positions))  # a first call, untimed

    def call():
        state[:] = compiled(state[0], state[1], tokens, positions)
        jax.block_until_ready(state[2])

    times = [time_call(call) for _ in range(reps)]
    return dict(ms=statistics.median(times) * 1e3, compile_s=compile_s, loss=float(state[2]),
                temp_mb=compiled.memory_analysis().temp_size_in_bytes / 2**20)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="100m", help=f"comma-separated subset of {sorted(CONFIGS)}")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--reps", type=int, default=8, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per policy, alternating")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--smoke", action="store_true", help="tiny config, 2 x 16, 3 reps, 1 round")
    parser.add_argument("--child", choices=sorted(POLICIES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names, batch, seq, reps = sizes(parser, args)
    rounds = 1 if args.smoke else args.rounds
    if rounds < 1:
        parser.error(f"--rounds must be >= 1, got {rounds}")
    if args.child:
        print(json.dumps(child(names[0], batch, seq, reps, args.dtype, POLICIES[args.child])))
        return
    results = {(n, p): [] for n in names for p in POLICIES}
    for n in names:
        for _ in range(rounds):
            for p in POLICIES:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", p, "--configs", n, "--batch", str(batch),
                       "--seq", str(seq), "--reps", str(reps), "--dtype", args.dtype]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                results[n, p].append(json.loads(out.strip().splitlines()[-1]))

    print(f"\ncommand: {command_line()}")
    print(f"{os.cpu_count()} CPUs; {args.dtype}; batch x seq {batch}x{seq}; per policy {rounds} fresh process(es) "
          f"of {reps} timed steps, alternating; step ms: median over processes of each one's median "
          f"[each process]; host memory: {host_memory.in_effect()}\n")
    print("| config | what the scan keeps | step ms | time / products' | XLA scratch MB | XLA compile s | final loss |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        base = statistics.median(r["ms"] for r in results[n, "products (default)"])
        for p in POLICIES:
            rs = results[n, p]
            ms = statistics.median(r["ms"] for r in rs)
            each = ", ".join(f"{r['ms']:.0f}" for r in rs)
            compile_s = statistics.median(r["compile_s"] for r in rs)
            print(f"| {n} | {p} | {ms:.1f} [{each}] | {ms / base:.2f}x | {rs[0]['temp_mb']:.1f} | {compile_s:.1f} | "
                  f"{rs[0]['loss']:.6f} |")


if __name__ == "__main__":
    main()
