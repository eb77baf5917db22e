"""A sampler's cold start, ours against Tunix's, each in a fresh process as a user starts a script.

    python benchmarks/cold_start.py                          # tiny and 100m, batch 1/8/64, 3 rounds
    python benchmarks/cold_start.py --configs 100m --batches 64 --rounds 3
    python benchmarks/cold_start.py --frozen     # ours on opd_jax.sampling.freeze's layout

Each round starts one child process per side, alternating (ours, Tunix, ours, Tunix, ...). A
child imports its library, loads the same Hugging Face checkpoint, then samples the same
prompts greedily three times: compile = the first call minus the median of the other two (the
same rule as ``bench_sampler.py``), run = that median, and "to first tokens" = the child's
wall time from its first line to the end of its first call (imports, load, compile, one run).
The printed figures are medians over rounds, with each round's value.

"first minus median" also holds whatever else a first call costs (a run in freshly mapped
memory, see below), so each child also sums what JAX itself reports for the compiles its first
call triggers (``jax.monitoring``'s durations of tracing, lowering to MLIR and XLA's backend
compile, over every program compiled, with their count): the compile proper, which a longer or
noisier run does not blur.

Why fresh processes: in ``bench_sampler.py`` ours runs first in a process that then runs
PyTorch and Tunix. On this machine a process's first touch of new memory is slow (the kernel
zeroes each page, and in a virtual machine the host may back it only then), so whoever runs
first pays for it; in one process, Tunix's compile looked 3x shorter than it does fresh. The
persistent compilation cache is off in the children (nothing carries over between them).
"""

from __future__ import annotations

_T0 = __import__("time").perf_counter()  # the child's start, before any import below

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SIDES = ("opd_jax", "tunix")
# jax.monitoring's duration events for the three stages of a compile (jax._src.dispatch's names)
COMPILE_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
                  "/jax/core/compile/backend_compile_duration": "xla"}


class CompileTimes:
    """Sums the compile stages JAX reports while ``recording`` is on (a ``jax.monitoring`` listener)."""

    def __init__(self):
        self.recording = False
        self.seconds = dict.fromkeys(COMPILE_EVENTS.values(), 0.0)
        self.programs = 0  # XLA compiles seen

    def __call__(self, event: str, duration: float, **_) -> None:
        stage = COMPILE_EVENTS.get(event)
        if self.recording and stage is not None:
            self.seconds[stage] += duration
            self.programs += stage == "xla"


def child(side: str, path: str, name: str, batch: int, prompt_len: int, new_tokens: int,
          frozen: bool = False) -> dict:
    """Run in the child process (``spawn`` sets its environment): load, sample three times, return
    the timings."""
    import jax
    import jax.monitoring
    from flax import nnx

    from benchmarks.common import CONFIGS, PAD, prompts, time_call

    compiles = CompileTimes()
    jax.monitoring.register_event_duration_secs_listener(compiles)

    tokens, mask = prompts(batch, prompt_len, CONFIGS[name]["vocab_size"])
    freeze_s = 0.0
    if side == "opd_jax":
        from opd_jax.models import from_pretrained
        from opd_jax.sampling import SamplerConfig, freeze, sample

        graphdef, params = nnx.split(from_pretrained(path), nnx.Param)
        jax.block_until_ready(params)
        if frozen:  # the per-layer layout, once, as part of loading (its time is reported apart)
            start = time.perf_counter()
            graphdef, params = jax.block_until_ready(freeze(graphdef, params))
            freeze_s = time.perf_counter() - start
        cfg = SamplerConfig(max_new_tokens=new_tokens, temperature=0.0, pad_id=PAD,
                            prompt_buckets=(prompt_len,), new_token_buckets=(new_tokens,))
        call = lambda: jax.block_until_ready(sample(graphdef, params, tokens, mask, jax.random.key(0),  # noqa: E731
                                                    cfg=cfg).tokens)
    else:
        from benchmarks import tunix_peer

        sampler = tunix_peer.TunixSampler(path, CONFIGS[name], "float32", PAD, prompt_len, new_tokens)
        jax.block_until_ready(jax.tree.leaves(nnx.state(sampler.sampler.transformer)))
        call = lambda: sampler(tokens, mask)  # noqa: E731 (returns host numpy: already complete)
    loaded = time.perf_counter()
    compiles.recording = True
    first = time_call(call)
    compiles.recording = False
    to_first = time.perf_counter() - _T0
    later = [time_call(call) for _ in range(2)]
    run = statistics.median(later)
    return dict(compile=first - run, run=run, to_first=to_first, load=loaded - _T0, freeze=freeze_s,
                jax_compile=sum(compiles.seconds.values()), programs=compiles.programs, **compiles.seconds)


def spawn(side: str, path: str, name: str, batch: int, prompt_len: int, new_tokens: int,
          frozen: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS")}
    env.update(JAX_PLATFORMS="cpu", OPD_JAX_COMPILE_CACHE="off")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", side, "--path", path, "--configs", name,
           "--batches", str(batch), "--prompt-len", str(prompt_len), "--new-tokens", str(new_tokens)]
    cmd += ["--frozen"] if frozen else []
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{side} child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def write_checkpoint(name: str, workdir: str) -> str:
    """The benchmark checkpoint of ``bench_sampler.build`` (same weights), saved once for all children."""
    from benchmarks.bench_sampler import build

    build(name, workdir)
    return os.path.join(workdir, name)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,100m")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--frozen", action="store_true",
                   help="ours samples from opd_jax.sampling.freeze's layout, made while loading")
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.path, a.configs, int(a.batches), a.prompt_len, a.new_tokens,
                               a.frozen)))
        return
    if a.rounds < 1:
        p.error(f"--rounds must be >= 1, got {a.rounds}")
    from benchmarks import tunix_peer
    from benchmarks.common import CONFIGS

    names, batches = a.configs.split(","), [int(b) for b in a.batches.split(",")]
    for n in names:
        if n not in CONFIGS:
            p.error(f"unknown config {n!r}; known: {sorted(CONFIGS)}")
    missing = tunix_peer.available()
    if missing:
        raise SystemExit(f"this benchmark compares with Tunix, which is not usable here: {missing}")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            path = write_checkpoint(name, workdir)
            for batch in batches:
                got = {s: [] for s in SIDES}
                for _ in range(a.rounds):
                    for side in SIDES:
                        got[side].append(spawn(side, path, name, batch, a.prompt_len, a.new_tokens,
                                               a.frozen))
                rows.append((name, batch, got))
                print(name, batch, {s: [round(r["compile"], 2) for r in v] for s, v in got.items()}, flush=True)
    import jax

    print(f"\ncommand: python {shlex.join(sys.argv)}")
    print(f"jax {jax.__version__}, Tunix {tunix_peer.VERSION}, {os.cpu_count()} CPUs; greedy, float32, prompts of "
          f"{a.prompt_len // 2}..{a.prompt_len} tokens, {a.new_tokens} new tokens; medians of {a.rounds} "
          "alternating rounds, one fresh process per side per round (per-round values in brackets)"
          + ("; ours frozen (opd_jax.sampling.freeze while loading: " + ", ".join(
              f"{name} batch {batch} {statistics.median(r['freeze'] for r in got['opd_jax']):.2f} s"
              for name, batch, got in rows) + "; in 'to first tokens', not in compile)" if a.frozen else "")
          + "\n")
    print_tables(rows)


def print_tables(rows) -> None:
    """The first call's overhead and the compile proper, per (config, batch): medians over rounds."""
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    each = lambda rs, k: "[" + ", ".join(f"{r[k]:.1f}" for r in rs) + "]"  # noqa: E731
    print("| config | batch | opd_jax compile s | Tunix compile s | opd_jax to first tokens s | "
          "Tunix to first tokens s | opd_jax run s | Tunix run s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, batch, got in rows:
        o, t = got["opd_jax"], got["tunix"]
        print(f"| {name} | {batch} | {med(o, 'compile'):.2f} {each(o, 'compile')} | {med(t, 'compile'):.2f} "
              f"{each(t, 'compile')} | {med(o, 'to_first'):.1f} | {med(t, 'to_first'):.1f} | "
              f"{med(o, 'run'):.2f} | {med(t, 'run'):.2f} |")
    print("\nThe compile proper, as JAX reports it for the first call (seconds: trace + lower + XLA, summed "
          "over the programs it compiled; then each stage's median):\n")
    print("| config | batch | opd_jax compile s | Tunix compile s | opd_jax programs | Tunix programs | "
          "opd_jax trace / lower / XLA | Tunix trace / lower / XLA |")
    print("|---|---|---|---|---|---|---|---|")
    stages = lambda rs: " / ".join(f"{med(rs, k):.2f}" for k in COMPILE_EVENTS.values())  # noqa: E731
    for name, batch, got in rows:
        o, t = got["opd_jax"], got["tunix"]
        print(f"| {name} | {batch} | {med(o, 'jax_compile'):.2f} {each(o, 'jax_compile')} | "
              f"{med(t, 'jax_compile'):.2f} {each(t, 'jax_compile')} | {med(o, 'programs'):.0f} | "
              f"{med(t, 'programs'):.0f} | {stages(o)} | {stages(t)} |")


if __name__ == "__main__":
    main()
