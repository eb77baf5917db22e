"""Training and evaluation curves of one or several runs, as PNG files.

    python -m opd_jax.plot RUN [RUN ...] [--out DIR] [--metrics loss/total,eval/pass@8]
        [--x step|flops|both] [--smooth 0.9]

Each ``RUN`` is a work directory, or ``LABEL=DIR[,DIR...]``: several runs of one arm (seeds),
drawn as their mean with a band of plus/minus one standard deviation. Training metrics come from
``<workdir>/metrics.jsonl`` (the names the trainer logs: ``loss/total``, ``diag/reverse_kl``,
``diag/student_entropy``, ``diag/overlap_ratio``, ...), evaluation metrics from
``<workdir>/eval/<step>.json`` under ``eval/<name>`` (``eval/pass@8``, ``eval/greedy_pass@1``,
``eval/reverse_kl``, ...). The x axis is the optimizer step or the cumulative model FLOPs
(``flops/sample + flops/score + flops/update`` of each logged step, times the steps since the
previous record when ``run.log_every > 1``). Without ``--metrics`` the figures are
``training_<x>.png`` (loss, reverse KL, entropy, overlap) and ``eval_<x>.png`` (every evaluation
metric found); ``--out`` defaults to ``<workdir>/plots`` for one run and ``plots`` otherwise.

The Python API (:func:`load_run`, :func:`curves`) is what experiments use for their figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np

TRAINING = ("loss/total", "diag/reverse_kl", "diag/student_entropy", "diag/overlap_ratio",
            "diag/entropy_gap_signed")
EVAL_FIRST = ("greedy_pass@1", "pass@1")  # then pass@k, then the rest, alphabetically
FLOPS = ("flops/sample", "flops/score", "flops/update")
EVAL_META = ("problems", "k", "max_new_tokens", "temperature", "step")  # settings, not metrics


class PlotError(ValueError):
    """A run directory without metrics, or a metric no run has."""


@dataclasses.dataclass
class Run:
    """One run's logged series: ``metrics[name] = (steps, values)``, float arrays."""
    name: str
    workdir: str
    metrics: dict[str, tuple[np.ndarray, np.ndarray]]
    flops: tuple[np.ndarray, np.ndarray] | None  # (steps, cumulative FLOPs)

    def x_of(self, steps: np.ndarray, x: str) -> np.ndarray:
        """``steps`` on the ``x`` axis (``"step"`` or ``"flops"``)."""
        if x == "step":
            return steps.astype(float)
        if self.flops is None:
            raise PlotError(f"{self.workdir}: metrics.jsonl has no {'/'.join(FLOPS)}; plot against "
                            "steps (--x step)")
        s, c = self.flops
        rate = (c[-1] - (c[-2] if len(c) > 1 else 0.0)) / max(s[-1] - (s[-2] if len(s) > 1 else 0), 1)
        return np.where(steps <= s[-1], np.interp(steps, np.r_[0, s], np.r_[0, c]),
                        c[-1] + (steps - s[-1]) * rate)


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        return float(v)  # "nan" / "inf" as written by the metrics writer
    except ValueError:
        return None


def _training(path: str) -> tuple[dict, tuple | None]:
    with open(path, encoding="utf-8") as f:
        lines = [(i, line) for i, line in enumerate(f, 1) if line.strip()]
    rows = []
    for j, (i, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if j < len(lines) - 1:  # only a killed run's unfinished last line is skipped
                raise PlotError(f"{path}:{i}: invalid JSON ({e.msg})") from e
    series: dict[str, tuple[list, list]] = {}
    for r in rows:
        for k, v in r.items():
            if k != "step" and (num := _number(v)) is not None:
                series.setdefault(k, ([], []))
                series[k][0].append(r["step"])
                series[k][1].append(num)
    flops = None
    counted = [r for r in rows if all(k in r for k in FLOPS)]  # training steps, not evaluations
    if counted:
        steps = np.asarray([r["step"] for r in counted], float)
        per_step = np.asarray([sum(float(r[k]) for k in FLOPS) for r in counted])
        flops = (steps, np.cumsum(per_step * np.diff(np.r_[0.0, steps])))
    return {k: (np.asarray(s, float), np.asarray(v, float)) for k, (s, v) in series.items()}, flops


def _evaluations(directory: str) -> dict:
    found = []
    for path in glob.glob(os.path.join(directory, "*.json")):
        stem = os.path.basename(path)[:-len(".json")]
        if stem.isdigit():
            with open(path, encoding="utf-8") as f:
                try:
                    found.append((int(stem), json.load(f)))
                except json.JSONDecodeError as e:
                    raise PlotError(f"{path}: invalid JSON ({e.msg})") from e
    series: dict[str, tuple[list, list]] = {}
    for step, result in sorted(found, key=lambda t: t[0]):
        for k, v in result.items():
            if k not in EVAL_META and not isinstance(v, str) and (num := _number(v)) is not None:
                series.setdefault(f"eval/{k}", ([], []))
                series[f"eval/{k}"][0].append(step)
                series[f"eval/{k}"][1].append(num)
    return {k: (np.asarray(s, float), np.asarray(v, float)) for k, (s, v) in series.items()}


def load_run(workdir: str, name: str | None = None) -> Run:
    """Read ``metrics.jsonl`` and ``eval/*.json`` of ``workdir`` (at least one must exist)."""
    if not os.path.isdir(workdir):
        raise PlotError(f"{workdir}: no such run directory")
    metrics_path, eval_dir = os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "eval")
    metrics, flops = _training(metrics_path) if os.path.exists(metrics_path) else ({}, None)
    evals = _evaluations(eval_dir) if os.path.isdir(eval_dir) else {}
    metrics.update(evals)  # eval/<name> from the evaluation files
    if not metrics:
        raise PlotError(f"{workdir}: no metrics (neither metrics.jsonl records nor eval/<step>.json "
                        "files); is it a run's work directory?")
    return Run(name or os.path.basename(os.path.normpath(workdir)), workdir, metrics, flops)


def _groups(runs) -> list[tuple[str, list[Run]]]:
    """``runs`` (paths, Runs, or a mapping label -> paths/Runs) as labelled groups."""
    as_run = lambda r: r if isinstance(r, Run) else load_run(os.fspath(r))  # noqa: E731
    if isinstance(runs, Mapping):
        items = [(label, [as_run(r) for r in ([rs] if isinstance(rs, (str, Run)) else rs)])
                 for label, rs in runs.items()]
    else:
        items = [(r.name, [r]) for r in map(as_run, runs)]
    if not items or any(not rs for _, rs in items):
        raise PlotError("no runs to plot")
    return items


def _ema(y: np.ndarray, smooth: float) -> np.ndarray:
    if not smooth:
        return y
    out, acc = np.empty_like(y), y[0]
    for i, v in enumerate(y):
        acc = smooth * acc + (1 - smooth) * v
        out[i] = acc
    return out


def _band(group: list[Run], metric: str, x: str, smooth: float):
    """``(x, mean, spread or None)`` of one metric over the runs of a group (interpolated onto the
    first run's points that every run covers)."""
    curves = [(r.x_of(r.metrics[metric][0], x), _ema(r.metrics[metric][1], smooth))
              for r in group if metric in r.metrics]
    if len(curves) == 1:
        return curves[0][0], curves[0][1], None
    lo, hi = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
    grid = curves[0][0][(curves[0][0] >= lo) & (curves[0][0] <= hi)]
    ys = np.stack([np.interp(grid, cx, cy) for cx, cy in curves])
    return grid, ys.mean(0), ys.std(0)


def curves(runs, metrics: Sequence[str], *, out: str, x: str = "step", smooth: float = 0.0,
           title: str | None = None, columns: int = 3) -> str:
    """Write one PNG with a panel per metric and a line per run (or per group of seeds, with a
    mean +- std band). ``runs``: work directories / :class:`Run`s, or ``{label: [dirs]}``."""
    if x not in ("step", "flops"):
        raise PlotError(f"x must be 'step' or 'flops', got {x!r}")
    if not metrics:
        raise PlotError("no metrics to plot")
    if not 0 <= smooth < 1:
        raise PlotError(f"smooth must lie in [0, 1), got {smooth}")
    groups = _groups(runs)
    have = sorted({m for _, rs in groups for r in rs for m in r.metrics})
    unknown = [m for m in metrics if m not in have]
    if unknown:
        raise PlotError(f"no run has the metric(s) {unknown}; available: {have}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    cols = min(columns, len(metrics))
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        for k, (label, group) in enumerate(groups):
            if not any(metric in r.metrics for r in group):
                continue
            gx, mean, spread = _band(group, metric, x, smooth)
            # a line keeps its color and style in every panel; past ten lines the style tells apart
            # the lines that share a color
            (line,) = ax.plot(gx, mean, marker="o" if len(gx) <= 20 else None, markersize=3,
                              color=f"C{k % 10}", linestyle=("-", "--", ":", "-.")[(k // 10) % 4],
                              label=label if len(group) == 1 else f"{label} (n={len(group)})")
            if spread is not None:
                ax.fill_between(gx, mean - spread, mean + spread, alpha=0.2, color=line.get_color())
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("optimizer step" if x == "step" else "model FLOPs")
        ax.grid(alpha=0.3)
    if len(groups) <= 6:
        fig.axes[0].legend(fontsize=8)
    else:  # beside the panels, where it hides no curve
        handles, labels = fig.axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def _save(fig, out: str) -> str:
    """Write the figure as a PNG atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, out)
    return out


def default_metrics(groups) -> tuple[list[str], list[str]]:
    """The training metrics of :data:`TRAINING` and every evaluation metric that some run has."""
    have = {m for _, rs in groups for r in rs for m in r.metrics}
    evals = sorted((m for m in have if m.startswith("eval/")), key=lambda m: (
        m[5:] not in EVAL_FIRST, EVAL_FIRST.index(m[5:]) if m[5:] in EVAL_FIRST else 0,
        not m.startswith("eval/pass@"), m))
    return [m for m in TRAINING if m in have], evals


def _parse_run(spec: str):
    if "=" in spec and not os.path.isdir(spec):
        label, _, dirs = spec.partition("=")
        return label, [d for d in dirs.split(",") if d]
    return None, spec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m opd_jax.plot", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="work directory, or LABEL=DIR[,DIR...]")
    p.add_argument("--out", help="output directory (default: <workdir>/plots, or ./plots)")
    p.add_argument("--metrics", help="comma-separated metric names (one figure, metrics.png)")
    p.add_argument("--x", default="both", choices=("step", "flops", "both"))
    p.add_argument("--smooth", type=float, default=0.0, help="EMA smoothing in [0, 1)")
    a = p.parse_args(argv)
    try:
        parsed = [_parse_run(s) for s in a.runs]
        if any(label for label, _ in parsed):
            groups = _groups({label or d: d for label, d in parsed})
        else:
            groups = _groups([d for _, d in parsed])
        out = a.out or (os.path.join(parsed[0][1], "plots") if len(parsed) == 1
                        and isinstance(parsed[0][1], str) else "plots")
        xs = ("step", "flops") if a.x == "both" else (a.x,)
        runs = {label: rs for label, rs in groups}
        figures = ({"metrics": a.metrics.split(",")} if a.metrics else
                   dict(zip(("training", "eval"), default_metrics(groups))))
        written = []
        for name, metrics in figures.items():
            for x in xs:
                if metrics and (x == "step" or all(r.flops for rs in runs.values() for r in rs)):
                    written.append(curves(runs, metrics, out=os.path.join(out, f"{name}_{x}.png"),
                                          x=x, smooth=a.smooth))
        if not written:
            raise PlotError("nothing to plot: the runs have none of the default metrics")
    except (PlotError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
