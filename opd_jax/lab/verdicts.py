"""The rules the lab's verdicts are written in, applied to stored results (``runner.run_all``).

A claim is split into *parts*, each a comparison of two groups of per-seed values (arm means at
the last evaluation unless said otherwise). A part's outcome:

- ``"holds"``: the claimed direction, by more than ``FACTOR`` pooled standard errors
  (``sqrt(s_a^2 / n_a + s_b^2 / n_b)``, sample standard deviations; :func:`runner.gap`);
- ``"reversed"``: the opposite direction by that margin;
- ``"unresolved"``: neither, or an arm has fewer than ``MIN_SEEDS`` seeds (one seed has no
  spread to compare a difference with: smoke runs are always unresolved).

``not_worse`` parts (a claim that one arm *matches* another) hold unless the other arm is better
by the margin: a weak test at this many seeds, and the numbers beside it say how weak.
:func:`combine` turns the parts into the experiment's verdict: ``"reproduced"`` when every part
holds, ``"not reproduced"`` when any part is reversed, ``"inconclusive"`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from opd_jax.lab import runner as R

FACTOR = 2.0
MIN_SEEDS = 3
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


def final(results: list[dict], metric: str, arm: str, *, step: int | None = None) -> list[float]:
    """The metric of every seed of ``arm`` at evaluation ``step`` (None: each run's last)."""
    values = R.values([r for r in results if r["arm"] == arm], metric, step=step)
    if arm not in values:
        raise ValueError(f"no stored run of arm {arm!r} (arms: {sorted({r['arm'] for r in results})})")
    return values[arm]


def start(results: list[dict], metric: str, arm: str) -> list[float]:
    """The metric of every seed of ``arm`` before training (step 0)."""
    return final(results, metric, arm, step=0)


def by_seed(results: list[dict], metric: str, arm: str, *, step: int | None = None) -> dict[int, float]:
    """``{seed: metric}`` of ``arm`` at evaluation ``step`` (None: the last)."""
    out = {}
    for r in results:
        if r["arm"] == arm:
            out[r["seed"]] = final([r], metric, arm, step=step)[0]
    if not out:
        raise ValueError(f"no stored run of arm {arm!r}")
    return out


def per_seed(results: list[dict], metric: str, arms: Sequence[str], fn=None, *,
             step: int | None = None) -> list[float]:
    """For every seed that all ``arms`` ran, ``fn`` of their values (default: the mean): one
    statistic per seed, e.g. the mean over a group of arms, or a difference of two arms (seed
    ``s`` of every arm is an independent run, so these are independent draws)."""
    tables = [by_seed(results, metric, a, step=step) for a in arms]
    seeds = sorted(set.intersection(*(set(t) for t in tables)))
    fn = fn or (lambda *xs: float(np.mean(xs)))
    return [float(fn(*(t[s] for t in tables))) for s in seeds]


def pass_k(results: list[dict]) -> str:
    """The evaluation's ``pass@k`` metric name (k from the stored schedule)."""
    return f"pass@{results[0]['schedule']['k']}"


def train_mean(results: list[dict], arm: str, key: str) -> float:
    """A training metric of ``arm`` averaged over its runs' logged intervals (NaN if absent)."""
    xs = [t[key] for r in results if r["arm"] == arm for t in r.get("train", []) if key in t]
    return float(np.mean(xs)) if xs else float("nan")


def unresolved(name: str, claim: str, metric: str, why: str) -> dict:
    """A part that cannot be decided (``why`` says what is missing)."""
    empty = {"label": why, "mean": math.nan, "std": math.nan, "n": 0, "values": []}
    return {"name": name, "claim": claim, "metric": metric, "kind": "undecidable", "a": empty, "b": None,
            "difference": math.nan, "pooled_se": math.nan, "factor": FACTOR, "outcome": "unresolved"}


def stats(xs: Sequence[float]) -> dict:
    """Mean, sample standard deviation, count and the values themselves."""
    if not len(xs):
        return {"mean": math.nan, "std": math.nan, "n": 0, "values": []}
    m, s = R.mean_std(list(xs))
    return {"mean": m, "std": s, "n": len(xs), "values": [float(x) for x in xs]}


def compare(name: str, a: Sequence[float], b: Sequence[float], *, a_label: str, b_label: str,
            metric: str, lower: bool = False, kind: str = "better") -> dict:
    """Part ``name``: ``a`` is better than ``b`` on ``metric`` (higher, or ``lower``), or with
    ``kind="not_worse"`` no worse than it (see the module docstring)."""
    if kind not in ("better", "not_worse"):
        raise ValueError(f"kind must be 'better' or 'not_worse', got {kind!r}")
    sa, sb = stats(a), stats(b)
    sign = -1.0 if lower else 1.0
    diff = sign * (sa["mean"] - sb["mean"])
    se = math.sqrt(sa["std"] ** 2 / sa["n"] + sb["std"] ** 2 / sb["n"]) if sa["n"] and sb["n"] else math.nan
    finite = all(math.isfinite(x) for x in (diff, se))
    if min(sa["n"], sb["n"]) < MIN_SEEDS or not finite:
        outcome = "unresolved"
    elif diff < -FACTOR * se:
        outcome = "reversed"
    elif kind == "not_worse" or diff > FACTOR * se:
        outcome = "holds"
    else:
        outcome = "unresolved"
    relation = {"better": "<" if lower else ">", "not_worse": "not worse than"}[kind]
    return {"name": name, "claim": f"{a_label} {relation} {b_label} on {metric}", "metric": metric,
            "kind": kind, "a": {"label": a_label, **sa}, "b": {"label": b_label, **sb},
            "difference": diff, "pooled_se": se, "factor": FACTOR, "outcome": outcome}


def better(results: list[dict], metric: str, a: str, b: str, *, name: str | None = None,
           lower: bool = False) -> dict:
    """Part: arm ``a``'s final metric beats arm ``b``'s."""
    return compare(name or f"{a} vs {b}", final(results, metric, a), final(results, metric, b),
                   a_label=a, b_label=b, metric=metric, lower=lower)


def not_worse(results: list[dict], metric: str, a: str, b: str, *, name: str | None = None,
              lower: bool = False) -> dict:
    """Part: arm ``a``'s final metric is no worse than arm ``b``'s."""
    return compare(name or f"{a} vs {b}", final(results, metric, a), final(results, metric, b),
                   a_label=a, b_label=b, metric=metric, lower=lower, kind="not_worse")


def changes(results: list[dict], metric: str, arm: str, *, up: bool = True, name: str | None = None) -> dict:
    """Part: training moved arm ``arm``'s metric up (or down) from its start."""
    return compare(name or f"{arm} {'rises' if up else 'falls'}", final(results, metric, arm),
                   start(results, metric, arm), a_label=f"{arm} at the end", b_label=f"{arm} at step 0",
                   metric=metric, lower=not up)


def paired(name: str, diffs: Sequence[float], *, label: str, metric: str) -> dict:
    """Part: the mean of per-seed paired differences is below 0 by ``FACTOR`` standard errors
    (``reversed``: above 0 by that margin)."""
    s = stats(diffs)
    se = s["std"] / math.sqrt(s["n"]) if s["n"] else math.nan
    ok = s["n"] >= MIN_SEEDS and math.isfinite(se) and math.isfinite(s["mean"])
    outcome = ("holds" if ok and -s["mean"] > FACTOR * se else
               "reversed" if ok and s["mean"] > FACTOR * se else "unresolved")
    return {"name": name, "claim": f"{label} < 0 on {metric}", "metric": metric, "kind": "paired",
            "a": {"label": label, **s}, "b": None, "difference": -s["mean"], "pooled_se": se,
            "factor": FACTOR, "outcome": outcome}


def steps_to(run: dict, metric: str, target: float) -> float:
    """The first evaluation step at which ``run``'s metric reaches ``target``; a run that never
    does counts as its last step plus one evaluation interval (censored)."""
    evals = run["evals"]
    for e in evals:
        if e[metric] >= target:
            return float(e["step"])
    return float(evals[-1]["step"] + run["schedule"]["every"])


def steps_to_target(results: list[dict], metric: str, arm: str, target: float) -> list[float]:
    return [steps_to(r, metric, target) for r in results if r["arm"] == arm]


def faster_to_half_gain(results: list[dict], arm: str, baseline: str, *, name: str,
                        also: Sequence[str] = (), metric: str = "pass@1") -> tuple[dict, dict]:
    """Part ``name``: ``arm`` takes fewer steps than ``baseline`` to reach ``baseline``'s mean
    ``metric`` at step 0 plus half its mean gain (:func:`steps_to`; a run that never does is
    censored one interval past its end), and the notes: ``start``, ``<baseline>_gain``,
    ``target`` and every arm's ``steps_to_target`` (``arm``, ``baseline``, ``also``).
    Unresolved, with no target in the notes, when ``baseline`` did not improve."""
    begin = stats(start(results, metric, baseline))["mean"]
    gain = stats(final(results, metric, baseline))["mean"] - begin
    notes = {"start": begin, f"{baseline}_gain": gain}
    if not gain > 0:
        return unresolved(name, f"{arm} < {baseline} on steps to target", "steps",
                          f"the {baseline} arm did not improve: no target"), notes
    target = begin + gain / 2
    steps = {a: steps_to_target(results, metric, a, target) for a in (baseline, arm, *also)}
    notes.update(target=target, steps_to_target={a: stats(x) for a, x in steps.items()})
    part = compare(name, steps[arm], steps[baseline], a_label=arm, b_label=baseline,
                   metric=f"steps to {metric} {target:.3f}", lower=True)
    return part, notes


def at_flops(run: dict, metric: str, flops: float) -> float:
    """``run``'s metric at ``flops`` spent, interpolated linearly between its evaluations."""
    f = np.array([e["flops"] for e in run["evals"]], float)
    v = np.array([e[metric] for e in run["evals"]], float)
    if flops > f[-1] * (1 + 1e-9):
        raise ValueError(f"arm {run['arm']!r} seed {run['seed']} spent only {f[-1]:.3g} FLOPs, not {flops:.3g}")
    return float(np.interp(flops, f, v))


def common_flops(results: list[dict], arms: Sequence[str]) -> float:
    """The largest FLOPs budget every run of ``arms`` reached."""
    return min(r["evals"][-1]["flops"] for r in results if r["arm"] in arms)


def values_at_flops(results: list[dict], metric: str, arm: str, flops: float) -> list[float]:
    return [at_flops(r, metric, flops) for r in results if r["arm"] == arm]


def combine(parts: list[dict], rule: str, notes: dict | None = None) -> dict:
    """The experiment's verdict from its parts (see the module docstring), with its rule, the
    parts' numbers and a one-line summary of what was measured."""
    outcomes = [p["outcome"] for p in parts]
    if parts and all(o == "holds" for o in outcomes):
        verdict = REPRODUCED
    elif "reversed" in outcomes:
        verdict = NOT_REPRODUCED
    else:
        verdict = INCONCLUSIVE
    return {"verdict": verdict, "rule": rule, "parts": parts, "notes": notes or {},
            "summary": "; ".join(describe(p) for p in parts)}


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3g}" if abs(x) >= 10 or abs(x) < 1e-3 and x else f"{x:.3f}"


def describe(part: dict) -> str:
    """``a 0.412+-0.020 > b 0.371+-0.015 on pass@1: holds (diff 0.041, 2 SE 0.050)``."""
    a, b = part["a"], part["b"]
    if part["kind"] == "undecidable":
        return f"{part['name']}: {part['outcome']} ({a['label']})"
    left = f"{a['label']} {_fmt(a['mean'])}±{_fmt(a['std'])}"
    right = f" vs {b['label']} {_fmt(b['mean'])}±{_fmt(b['std'])}" if b else ""
    return (f"{part['name']}: {left}{right} on {part['metric']} (n={a['n']}): {part['outcome']} "
            f"(diff {_fmt(part['difference'])}, {part['factor']:g} SE {_fmt(part['factor'] * part['pooled_se'])})")
