"""What each ``$OPD_JAX_HOST_MEMORY`` policy costs and buys: resident memory, page faults and time of
a train step over many steps, and why the ``keep`` policy's heap grows.

Each measurement runs in a fresh child process (the allocator policy must be set before anything
allocates):

1. ``train``: ``bench_model.py``'s donated train steps (next-token cross-entropy, AdamW) of a
   ``benchmarks.common`` config, under each policy (``system``, ``hugepages``, ``keep``): seconds,
   minor page faults and resident memory after every step.
2. ``aligned``: glibc alone, through ctypes, with the kept policy. A loop allocates a 128 MB block
   with ``posix_memalign``, a small block after it, and frees the previous big block: how far the
   heap has grown after each iteration, for 16- and 64-byte alignment (XLA:CPU asks for 64).

    python benchmarks/host_memory_growth.py                 # ~100M, 30 steps per policy
    python benchmarks/host_memory_growth.py --smoke         # seconds: tiny config, 3 steps
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from opd_jax import host_memory  # noqa: E402

_TRAIN = """
import json, os, resource, sys, time
from opd_jax import host_memory
kept = host_memory.keep_freed_memory()
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from opd_jax.models import Transformer, ModelConfig
from benchmarks.bench_model import jax_fns
from benchmarks.common import CONFIGS
name, steps, batch, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = ModelConfig.from_hf(dict(CONFIGS[name], model_type="qwen3"))
params, opt, _, step = jax_fns(Transformer(cfg, rngs=nnx.Rngs(0)))  # bench_model's donated step
tokens = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (batch, seq)), jnp.int32)
positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
rows = []
for i in range(steps + 1):  # step 0 compiles
    faults, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    params, opt, loss = step(params, opt, tokens, positions)
    loss.block_until_ready()
    rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGESIZE")
    rows.append(dict(s=time.perf_counter() - t, faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults,
                     rss_gb=rss / 2**30))
print(json.dumps({"kept": kept, "in_effect": host_memory.in_effect(), "rows": rows}))
"""

_ALIGNED = """
import ctypes, json, sys
from opd_jax import host_memory
assert host_memory.keep_freed_memory(), "glibc's mallopt is not available here"
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.sbrk.restype = ctypes.c_void_p, ctypes.c_void_p
libc.free.argtypes, libc.sbrk.argtypes = [ctypes.c_void_p], [ctypes.c_ssize_t]
memalign = libc.posix_memalign
memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
growth, small, previous, start = [], [], None, None
for _ in range(int(sys.argv[2])):
    block = ctypes.c_void_p()
    assert memalign(ctypes.byref(block), int(sys.argv[1]), 128 << 20) == 0
    small.append(libc.malloc(200))  # something allocated after the big block, still alive
    if previous is not None:
        libc.free(previous)  # the previous block is freed once the new one exists, as XLA's outputs
    previous = block.value
    top = libc.sbrk(0)
    start = top if start is None else start
    growth.append((top - start) // 2**20)
print(json.dumps(growth))
"""


def child(program: str, *args, policy: str = "keep") -> dict | list:
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", OPD_JAX_HOST_MEMORY=policy)
    env.pop("GLIBC_TUNABLES", None)  # this process's own, set by the hugepages policy
    env = host_memory.relaunch_environment(env) or env  # what `python -m opd_jax...` would start under
    run = subprocess.run([sys.executable, "-c", program, *map(str, args)], env=env, cwd=REPO,
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"child failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="100m")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--loops", type=int, default=16, help="iterations of the aligned-allocation loop")
    ap.add_argument("--smoke", action="store_true", help="tiny config, 3 steps, 4 loops")
    a = ap.parse_args(argv)
    if a.smoke:
        a.config, a.steps, a.loops = "tiny", 3, 4
    if a.steps < 1:
        ap.error(f"--steps must be >= 1, got {a.steps}")

    print(f"command: python {shlex.join(sys.argv)}")
    print(f"{os.cpu_count()} CPUs; {a.config}, batch {a.batch} x {a.seq}, {a.steps} donated train steps "
          "after the compiling one, each policy in a fresh process\n")
    print("| policy | in effect | compiling step s | median step s | slowest step s | median faults / step | "
          "resident GB: after step 1 | peak | at the end |")
    print("|---|---|---|---|---|---|---|---|---|")
    for policy in (host_memory.SYSTEM, host_memory.HUGEPAGES, host_memory.KEEP):
        out = child(_TRAIN, a.config, a.steps, a.batch, a.seq, policy=policy)
        first, rows = out["rows"][0], out["rows"][1:]
        rss = [r["rss_gb"] for r in rows]
        print(f"| {policy} | {out['in_effect']} | {first['s']:.2f} | {statistics.median(r['s'] for r in rows):.2f} | "
              f"{max(r['s'] for r in rows):.2f} | {statistics.median(r['faults'] for r in rows):,.0f} | "
              f"{rss[0]:.2f} | {max(rss):.2f} | {rss[-1]:.2f} |")
    print("\nglibc alone, kept policy: heap growth (MB) after each iteration of a loop that allocates "
          "128 MB with posix_memalign and frees the previous block\n")
    for align in (16, 64):
        print(f"- alignment {align}: {child(_ALIGNED, align, a.loops)}")


if __name__ == "__main__":
    main()
