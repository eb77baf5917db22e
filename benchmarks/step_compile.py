"""XLA's compile time of the Trainer's train step under sets of XLA compiler options, alternating.

The step is the lab's baseline OPD arm on the shipped models (``lab/models``: the quickstart's
first arm). One iteration runs to record the step's arguments; then the step is lowered once
and compiled again and again, each option set in turn (A B A B ...), with the persistent
compilation cache off so that every compile is a real one. Wall and CPU seconds (XLA:CPU
compiles on both cores), medians. ``--runs N`` also times N executions of each compiled step
(on copies of the recorded arguments), the cost side of a cheaper compile.

    python benchmarks/step_compile.py       # LLVM level 0 (the tests') and XLA's default, each with both emitters
    python benchmarks/step_compile.py --rounds 7 --runs 5 --variants ";xla_cpu_use_fusion_emitters=false"

``--variants``: option sets separated by ``;``, each a comma-separated list of ``name=value``
(XLA debug options, as ``jax.jit(..., compiler_options=)`` takes them); an empty set is XLA's
defaults (or what ``$XLA_FLAGS`` says). Run it on quiet cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VARIANTS = ("xla_backend_optimization_level=0;"
                    "xla_backend_optimization_level=0,xla_cpu_use_fusion_emitters=false;;"
                    "xla_cpu_use_fusion_emitters=false")


def parse_variants(text: str) -> list[dict]:
    """``"a=1,b=false;;c=x"`` -> ``[{"a": 1, "b": False}, {}, {"c": "x"}]``."""
    out = []
    for part in text.split(";"):
        options = {}
        for item in filter(None, (s.strip() for s in part.split(","))):
            if "=" not in item:
                raise SystemExit(f"error: option {item!r} is not name=value (in --variants {text!r})")
            name, value = (s.strip() for s in item.split("=", 1))
            low = value.lower()
            options[name] = True if low == "true" else False if low == "false" else \
                int(value) if value.lstrip("-").isdigit() else value
        out.append(options)
    return out


def label(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "(XLA's defaults)"


def step_and_args(workdir: str):
    """The Trainer's jitted train step and copies of the arguments of its first call."""
    import jax

    from opd_jax.lab import baseline
    from opd_jax.lab import runner as R
    from opd_jax.models import load_tokenizer
    from opd_jax.training.loop import Trainer

    lab = baseline.lab("quick")
    arm = baseline.arm("opd", baseline.OPD, "quick", steps=1)
    tok = load_tokenizer(os.path.join(lab.data, "tokenizer"))
    trainer = Trainer(R.experiment(arm, lab, 0, workdir), tokenizer=tok)
    step, seen = trainer.step_fn, []

    def recording(*args):
        seen.append(jax.tree.map(lambda x: x.copy(), args))  # the step donates its state
        return step(*args)

    trainer.step_fn = recording
    trainer.iteration()
    return step, seen[0], trainer.mesh


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="option sets, ';'-separated (see above)")
    p.add_argument("--rounds", type=int, default=5, help="compiles of each option set, alternating")
    p.add_argument("--runs", type=int, default=0, help="executions of each compiled step per round, timed")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.runs < 0:
        p.error(f"--rounds must be >= 1 and --runs >= 0, got {a.rounds} and {a.runs}")
    variants = parse_variants(a.variants)
    os.environ["OPD_JAX_COMPILE_CACHE"] = "off"
    sys.path.insert(0, ROOT)
    import jax
    jax.config.update("jax_enable_compilation_cache", False)
    from benchmarks.common import command_line, time_call

    with tempfile.TemporaryDirectory() as workdir:
        step, args, mesh = step_and_args(workdir)
    with jax.set_mesh(mesh):
        lowered = step.lower(*args)
    lowered.compile(compiler_options=variants[0])  # warm-up: XLA's one-time set-up in this process
    # jax keeps compiled executables in memory by (program, options): cleared before each compile
    wall, cpu, run = ([[] for _ in variants] for _ in range(3))
    for _ in range(a.rounds):
        for i, options in enumerate(variants):
            jax.clear_caches()
            t, c = time.perf_counter(), time.process_time()
            compiled = lowered.compile(compiler_options=options)
            wall[i].append(time.perf_counter() - t)
            cpu[i].append(time.process_time() - c)
            for _ in range(a.runs):
                state = jax.tree.map(lambda x: x.copy(), args[0])
                jax.block_until_ready(state)
                run[i].append(time_call(lambda: jax.block_until_ready(compiled(state, *args[1:]))))
    print(f"command: {command_line()}")
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
          f"the lab's OPD train step, {a.rounds} alternating compiles each, medians\n")
    print("| XLA options | compile s (wall) | CPU s | each compile, wall s |" + (" step ms |" if a.runs else ""))
    print("|---|---|---|---|" + ("---|" if a.runs else ""))
    rows = []
    for options, w, c, r in zip(variants, wall, cpu, run):
        rows.append(dict(options=options, wall=statistics.median(w), cpu=statistics.median(c), walls=w,
                         step_ms=1e3 * statistics.median(r) if r else None))
        print(f"| {label(options)} | {rows[-1]['wall']:.2f} | {rows[-1]['cpu']:.2f} | "
              f"{', '.join(f'{x:.2f}' for x in w)} |" + (f" {rows[-1]['step_ms']:.1f} |" if r else ""))
    return rows


if __name__ == "__main__":
    main()
