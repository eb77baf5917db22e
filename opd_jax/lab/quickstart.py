"""The lab's quickstart: on-policy distillation next to its off-policy control, from the shipped
models, over seeds, with a table and a figure. The README's main job.

    python -m opd_jax.lab.quickstart                  # 2 arms x 3 seeds x 60 steps
    python -m opd_jax.lab.quickstart --student weak --steps 200 --seeds 5
    python -m opd_jax.lab.quickstart --smoke          # a tiny lab trained first, seconds

From the shipped teacher and a shipped student start (``lab/models``, see
:mod:`opd_jax.lab.zoo`), it trains two arms for the same number of steps, prompts and samples:

- ``opd``: the lab's baseline on-policy objective (:data:`opd_jax.lab.baseline.OPD`) on the
  student's own samples, scored token by token by the teacher;
- ``control``: sequence-level KD (:data:`opd_jax.lab.baseline.CONTROL`: supervised training on
  the teacher's samples of the same prompts), the same-budget off-policy control.

Every run is evaluated on held-out problems before training and along the way (greedy pass@1,
pass@1, pass@k, distinct correct solutions per problem, entropy, and the exact reverse KL to the
teacher on the student's samples). It prints the table (mean +- standard deviation over seeds),
whether OPD beats the control on pass@1 by more than two pooled standard errors, and writes
``results.json`` (every run) and ``quickstart.png`` (pass@1 and reverse KL against steps) into
the output directory. Nothing is downloaded; the data directory is built locally if missing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from opd_jax.lab import baseline
from opd_jax.lab import runner as R
from opd_jax.lab import verdicts as V

COLUMNS = ("greedy_pass@1", "pass@1", "pass@{k}", "distinct_correct", "entropy", "reverse_kl")
FIGURE = ("pass@1", "reverse_kl")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m opd_jax.lab.quickstart", description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="strong", choices=("weak", "strong"),
                   help="the shipped student start (default: strong)")
    p.add_argument("--steps", type=int, default=60, help="training steps per run (default 60)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the baseline's)")
    p.add_argument("--problems", type=int, default=128, help="held-out problems per evaluation (default 128)")
    p.add_argument("--every", type=int, default=None, help="evaluate every N steps (default: steps / 3)")
    p.add_argument("--out", default=None, help="output directory (default: runs/quickstart/<date-time>)")
    p.add_argument("--cpu-devices", type=int, default=min(2, os.cpu_count() or 1),
                   help="on a CPU, split it into N JAX devices and spread every batch's rows over "
                        "them (default: 2 where there are 2 cores; 1 keeps one device)")
    p.add_argument("--smoke", action="store_true", help="a tiny lab trained first; seconds (for the tests)")
    a = p.parse_args(argv)
    for name in ("steps", "seeds", "problems", "cpu_devices"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.every is not None and a.every < 1:
        p.error(f"--every must be >= 1, got {a.every}")
    if a.lr is not None and not a.lr > 0:
        p.error(f"--lr must be > 0, got {a.lr}")
    if a.cpu_devices > 1:
        b = baseline.budget("smoke" if a.smoke else "quick")
        rows = {f"{b.prompts} prompts x {b.samples} samples": b.prompts * b.samples,
                f"--problems {a.problems}": a.problems}
        odd = [k for k, n in rows.items() if n % a.cpu_devices]
        if odd:
            p.error(f"--cpu-devices {a.cpu_devices} must divide the rows of every batch ({', '.join(odd)}); "
                    "use 1, 2 or 4 devices, or another --problems")
    if a.out is None:
        a.out = os.path.join("runs", "quickstart", time.strftime("%Y%m%d-%H%M%S"))
    if os.path.exists(a.out) and os.listdir(a.out):
        p.error(f"output directory {a.out} is not empty: give a new --out (results there are kept)")
    return a


def lab_and_arms(a: argparse.Namespace):
    """The lab, the two arms and the evaluation schedule of the quickstart's arguments."""
    mode = "smoke" if a.smoke else "quick"
    if mode == "smoke":
        lab = baseline.lab("smoke", root=os.path.join(a.out, "lab"))
    else:
        missing = [n for n in ("teacher", a.student)
                   if not os.path.exists(os.path.join(baseline.zoo.MODELS, n, "manifest.json"))]
        if missing:
            raise SystemExit(f"error: the shipped lab model(s) {missing} are missing from "
                             f"{baseline.zoo.MODELS}; build them with: python -m opd_jax.lab.zoo build "
                             + " ".join(missing))
        lab = baseline.lab("quick")
    b = baseline.budget(mode)
    lr = a.lr if a.lr is not None else b.lr
    # the rows of every batch (training and evaluation) spread over the CPU's devices
    fields = dict(steps=a.steps, lr=lr, student=a.student, overrides=(f"mesh.data={_rows_over(a)}",))
    arms = [baseline.arm("opd", baseline.OPD, mode, **fields),
            baseline.arm("control", baseline.CONTROL, mode, source="teacher", **fields)]
    k = b.schedule.k
    schedule = R.Schedule(every=a.every or max(1, a.steps // 3), problems=a.problems, k=k)
    return lab, arms, schedule


def _rows_over(a: argparse.Namespace) -> int:
    """The devices the rows spread over: ``--cpu-devices`` on a CPU, one accelerator elsewhere."""
    import jax
    return min(a.cpu_devices, jax.device_count()) if jax.default_backend() == "cpu" else 1


def _fmt(xs: list[float]) -> str:
    m, s = R.mean_std(xs)
    return f"{m:.3f} +- {s:.3f}" if len(xs) > 1 else f"{m:.3f}"


def table(results: list[dict], teacher_eval: dict | None, k: int) -> str:
    """The printed table: teacher, student before, each arm after (mean +- std over seeds)."""
    cols = [c.format(k=k) for c in COLUMNS]
    rows = []
    if teacher_eval:
        rows.append(("teacher", [f"{teacher_eval[c]:.3f}" if c in teacher_eval else "-" for c in cols]))
    before = {c: R.values(results, c, step=0) for c in cols}
    rows.append(("student before", [_fmt(sum(before[c].values(), [])) for c in cols]))
    after = {c: R.values(results, c) for c in cols}
    for arm in dict.fromkeys(r["arm"] for r in results):
        label = {"opd": "after OPD", "control": "after the control"}.get(arm, f"after {arm}")
        rows.append((label, [_fmt(after[c][arm]) for c in cols]))
    width = max(len(r[0]) for r in rows) + 2
    cw = max(15, *(len(c) + 2 for c in cols))
    lines = [" " * width + "".join(c.rjust(cw) for c in cols)]
    lines += [name.ljust(width) + "".join(v.rjust(cw) for v in vals) for name, vals in rows]
    return "\n".join(lines)


def main(argv=None) -> dict:
    a = parse(argv)
    t0 = time.perf_counter()
    if a.cpu_devices > 1:
        import jax
        try:  # read when JAX creates its CPU client; a process that already has devices keeps them
            jax.config.update("jax_num_cpu_devices", a.cpu_devices)
        except RuntimeError:
            pass
    from opd_jax import process
    process.prepare()  # allocator policy and compilation cache, before JAX starts
    lab, arms, schedule = lab_and_arms(a)
    seeds = list(range(a.seeds))
    arm = arms[0]
    print(f"teacher {lab.path(arm.teacher)}; student start {lab.path(arm.student)}; {arm.steps} steps x "
          f"{arm.prompts} prompts x {arm.samples} samples, lr {arm.lr:g}; {len(seeds)} seeds; "
          f"evaluated on {schedule.problems} held-out problems every {schedule.every} steps; rows over "
          f"{_rows_over(a)} device(s)", flush=True)
    results = R.run_all(arms, lab, seeds, out=os.path.join(a.out, "runs"), schedule=schedule,
                        log=lambda s: print("  " + s, flush=True))
    # the teacher on the same held-out problems (its reverse KL to itself is 0: shown as "-")
    teacher_eval = baseline.zoo.evaluate_model(lab.path(arm.teacher), lab.data, schedule.problems, schedule.k)
    print()
    print(table(results, teacher_eval, schedule.k))
    final = R.values(results, "pass@1")
    g = V.compare("opd vs control", final["opd"], final["control"], a_label="opd", b_label="control",
                  metric="pass@1")
    why = f"fewer than {V.MIN_SEEDS} seeds" if len(seeds) < V.MIN_SEEDS else "within the margin"
    verdict = {"holds": "yes", "reversed": "no, the control is better by that margin"}.get(
        g["outcome"], f"undecided ({why})")
    print(f"\nOPD beats the control on pass@1 by more than 2 pooled standard errors: {verdict} "
          f"(difference {g['difference']:+.3f}, pooled s.e. {g['pooled_se']:.3f}; "
          f"{len(seeds)} seed(s) per arm)")
    png = R.figure(results, list(FIGURE), os.path.join(a.out, "quickstart.png"),
                   title=f"OPD vs its off-policy control, from the {a.student} student")
    from opd_jax.config import write_json
    summary = {"args": vars(a), "opd_vs_control": g, "teacher": teacher_eval, "runs": results,
               "wall_s": round(time.perf_counter() - t0, 1), **R.provenance()}
    write_json(summary, os.path.join(a.out, "results.json"))
    print(f"done in {time.perf_counter() - t0:.0f} s; figure {png}; every run in "
          f"{os.path.join(a.out, 'results.json')}")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
