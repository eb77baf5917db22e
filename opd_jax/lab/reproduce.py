"""Reproduce the papers' claims in the lab: run any of the experiments of ``experiments/lab/``,
keep every result, judge each claim by its stated rule, draw its figure, and refresh the lab
table of ``experiments/README.md`` from what is stored.

    python -m opd_jax.lab.reproduce --list                      # the experiments and their state
    python -m opd_jax.lab.reproduce entropy_aware topk_bias     # quick mode (the default)
    python -m opd_jax.lab.reproduce gkd_grid --mode full        # more steps and seeds
    python -m opd_jax.lab.reproduce --mode smoke                # every experiment, in seconds
    python -m opd_jax.lab.reproduce --table                     # only refresh the README table

Each experiment is one file, ``experiments/lab/<name>.py``: its paper and claim, its arms per
mode (built on :mod:`opd_jax.lab.baseline`), the metrics its figure shows and a verdict rule
written before any run (:mod:`opd_jax.lab.verdicts`). Results live in
``experiments/lab/results/<name>/<mode>/``: one JSON per arm and seed (``runner.run_all``, with
the commit, the command and the hardware; an existing run is reused, a changed arm under an old
name refused), ``experiment.json`` (verdict, rule, parts and numbers, wall time, hardware,
commit, command) and ``figure_<x>.png``. Smoke results go to their own directory and never
reach the README, whose table is built from quick and full results only (full preferred).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import time

from opd_jax.lab import verdicts as V
from opd_jax.lab import zoo

ROOT = zoo.ROOT
EXPERIMENTS = os.path.join(ROOT, "experiments", "lab")
RESULTS = os.path.join(EXPERIMENTS, "results")
README = os.path.join(ROOT, "experiments", "README.md")
NAMES = ("baseline_regime", "baseline_levers", "gkd_grid", "opd_vs_sft_vs_rl", "entropy_aware", "asymmetric", "relaxed",
         "token_importance", "compatibility", "topk_bias", "self_distillation", "unified_sd", "control_variate",
         "position_weighting", "topk_support", "trust_region_blend",
         "power_transform", "rollout_horizon", "update_extrapolation", "reference_anchor",
         "divergence_aware_sft", "peer_rollouts", "cross_tokenizer", "virtual_vocabulary",
         "lookahead_reward", "turn_curriculum", "rollout_reuse", "turn_curriculum_episodes",
         "turn_curriculum_deep", "turn_curriculum_two_retries", "speculative_drafter",
         "speculative_drafter_small", "speculative_replay_small", "lora_capacity",
         "lora_rank_scaling")
MODES = ("smoke", "quick", "full")
TABLE_MODES = ("full", "quick")  # the README shows the first of these that is stored
REQUIRED = ("PAPER", "ARXIV", "CLAIM", "SETUP", "RULE", "FIGURE", "arms", "verdict")
BEGIN, END = "<!-- lab-table:begin -->", "<!-- lab-table:end -->"
OWN_TEACHERS = ("self", "initial", "ema")
# The rough CPU cost --list estimates from (a 2 x 128 student, 16 prompts x 4 samples, a quiet
# 2-core machine): seconds per training step and per evaluation.
STEP_S, EVAL_S = 0.3, 10.0


def load(name: str):
    """The experiment module ``experiments/lab/<name>.py``, checked for what reproduce reads."""
    if name not in NAMES:
        raise ValueError(f"unknown lab experiment {name!r}; known: {', '.join(NAMES)}")
    path = os.path.join(EXPERIMENTS, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"opd_lab_experiment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [a for a in REQUIRED if not hasattr(module, a)]
    if missing:
        raise ValueError(f"{path} lacks {missing}: every lab experiment defines {REQUIRED}")
    return module


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {MODES}")
    return mode


def plan(module, mode: str):
    """``(arms, schedule, seeds)`` of an experiment module in ``mode``."""
    from opd_jax.lab import baseline as BL
    b = BL.budget(_mode(mode))
    schedule = module.schedule(mode) if hasattr(module, "schedule") else b.schedule
    seeds = tuple(module.seeds(mode)) if hasattr(module, "seeds") else tuple(b.seeds)
    return list(module.arms(mode)), schedule, seeds


def figure_metrics(module, schedule) -> list[str]:
    """The metrics an experiment's figure shows (``pass@k`` read as the schedule's k)."""
    return [m.replace("pass@k", f"pass@{schedule.k}") for m in module.FIGURE]


def needs(arms, schedule) -> tuple[set[str], set[str]]:
    """The lab models and the record files the arms and the schedule read."""
    models = {m for a in arms for m in (a.student, a.teacher) if m not in OWN_TEACHERS}
    if schedule.reference:
        models.add(schedule.reference)
    return models, {a.data for a in arms} | {schedule.test}


def lab_for(mode: str, models: set[str], files: set[str], *, lab_root: str | None = None):
    """The lab of ``mode`` with every model of ``models`` and every record file of ``files``
    (derived files are written; in smoke mode the extra models are trained, in seconds)."""
    from opd_jax.lab import baseline as BL
    from opd_jax.lab import runner as R
    from opd_jax.lab import variants
    lab = BL.lab(mode) if lab_root is None else BL.lab(mode, root=lab_root)
    paths = dict(lab.models)
    if mode == "smoke":
        where = os.path.dirname(paths["teacher"])
        setting = zoo.SETTINGS["smoke"]
        for name in sorted(models - set(paths)):
            zoo.build(name, setting, models=where, data_dir=lab.data,
                      workdir=os.path.join(os.path.dirname(where), "zoo"), log=None)
            paths[name] = os.path.join(where, name)
    unknown = sorted(m for m in models if m not in paths and not os.path.isdir(m))
    if unknown:
        raise ValueError(f"the lab has no model(s) {unknown}; known: {sorted(paths)}")
    absent = sorted(m for m in models if m in paths and not os.path.exists(os.path.join(paths[m], "config.json")))
    if absent:
        raise FileNotFoundError(f"lab model(s) {absent} are not built: python -m opd_jax.lab.zoo build "
                                + " ".join(absent))
    for f in sorted(files):
        variants.ensure(lab.data, f)
    return R.Lab(lab.data, paths)


def _numbers(results: list[dict], metrics: list[str]) -> dict:
    from opd_jax.lab import runner as R
    out = {}
    for metric in metrics:
        if not all(metric in r["evals"][-1] for r in results):
            continue
        for arm, xs in R.values(results, metric).items():
            m, s = R.mean_std(xs)
            out.setdefault(arm, {})[metric] = {"mean": m, "std": s, "n": len(xs)}
    return out


def _hardware(results: list[dict]) -> list[dict]:
    seen = []
    for r in results:
        h = {k: v for k, v in (r.get("hardware") or {}).items() if k != "load_average"}
        if h and h not in seen:
            seen.append(h)
    return seen


def run(name: str, mode: str = "quick", *, results: str = RESULTS, lab_root: str | None = None,
        log=print) -> dict:
    """Run experiment ``name`` in ``mode`` (stored runs are reused), judge it, draw its figures
    and store ``experiment.json``; returns that record."""
    from opd_jax.config import write_json
    from opd_jax.lab import runner as R
    module = load(name)
    arms, schedule, seeds = plan(module, _mode(mode))
    models, files = needs(arms, schedule)
    lab = lab_for(mode, models, files, lab_root=lab_root)
    out = os.path.join(results, name, mode)
    t0 = time.perf_counter()
    try:
        runs = R.run_all(arms, lab, list(seeds), out=out, schedule=schedule, log=log)
    except ValueError as e:
        if "another configuration" not in str(e):
            raise
        raise ValueError(f"{e}. When the baseline regime (opd_jax.lab.baseline) changed, every arm "
                         f"changed with it: move {out} aside (it stays the result of the earlier "
                         "regime) and run again.") from e
    verdict = module.verdict(runs, mode)
    shown = figure_metrics(module, schedule)
    figures = []
    for x in getattr(module, "X", ("step",)):
        path = os.path.join(out, f"figure_{x}.png")
        R.figure(runs, shown, path, x=x, title=f"{name} ({mode}): {module.PAPER}")
        figures.append(os.path.relpath(path, out))
    current = {a.name for a in arms}
    kept = sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d)) and d not in current
                  and not d.endswith(".work"))
    decisive = [p["metric"] for p in verdict["parts"]]
    record = {
        "name": name, "mode": mode, "paper": module.PAPER, "arxiv": module.ARXIV, "claim": module.CLAIM,
        "setup": module.SETUP, "rule": module.RULE, "verdict": verdict,
        "arms": [a.name for a in arms], "seeds": list(seeds), "kept_arms": kept,
        "numbers": _numbers(runs, list(dict.fromkeys(shown + decisive))),
        "figures": figures, "wall_s": round(sum(r.get("wall_s", 0.0) for r in runs), 1),
        "invocation_s": round(time.perf_counter() - t0, 1), "hardware": _hardware(runs),
        "date": time.strftime("%Y-%m-%d"), **R.provenance()}
    write_json(record, os.path.join(out, "experiment.json"))
    if log:
        log(f"{name} ({mode}): {verdict['verdict']} -- {verdict['summary']}")
    return record


def stored(name: str, mode: str, results: str = RESULTS) -> dict | None:
    path = os.path.join(results, name, mode, "experiment.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _hw_text(record: dict) -> str:
    parts = []
    for h in record.get("hardware") or []:
        parts.append(f"CPU, {h.get('cpus')} cores" if h.get("platform") == "cpu"
                     else f"{h.get('devices')} x {h.get('device_kind')}")
    return " / ".join(dict.fromkeys(parts)) or "unknown"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


VERDICTS = (V.REPRODUCED, V.NOT_REPRODUCED, V.INCONCLUSIVE)


def tally(verdicts: list[str | None]) -> str:
    """One sentence counting the verdicts of the table's rows (``None``: not run yet)."""
    run = [v for v in verdicts if v is not None]
    counts = ", ".join(f"{run.count(v)} {v}" for v in VERDICTS)
    return f"Tally (generated with the table): {len(run)} of {len(verdicts)} experiments run; {counts}."


def table(results: str = RESULTS, readme_dir: str = os.path.dirname(README)) -> str:
    """The lab table (markdown), one row per experiment, from the stored quick/full results,
    followed by the tally of its verdicts."""
    verdicts = []
    rows = ["| experiment | paper | claim | command | hardware | wall time | measured result | verdict |",
            "|---|---|---|---|---|---|---|---|"]
    for name in NAMES:
        module = load(name)
        record = next((r for r in (stored(name, m, results) for m in TABLE_MODES) if r), None)
        paper = f"{module.PAPER} (arXiv {module.ARXIV})" if module.ARXIV else module.PAPER
        if record is None:
            cmd = f"`python -m opd_jax.lab.reproduce {name}`"
            rows.append(f"| `{name}` | {_cell(paper)} | {_cell(module.CLAIM)} | {cmd} | not run yet | "
                        "not run yet | not run yet | not run yet |")
            verdicts.append(None)
            continue
        mode = record["mode"]
        cmd = f"`python -m opd_jax.lab.reproduce {name}" + ("" if mode == "quick" else f" --mode {mode}") + "`"
        figs = ", ".join(f"[{os.path.splitext(f)[0]}]({os.path.relpath(os.path.join(results, name, mode, f), readme_dir)})"
                         for f in record.get("figures", []))
        result = _cell(record["verdict"]["summary"]) + (f" ({figs})" if figs else "")
        seeds = len(record.get("seeds", []))
        rows.append(f"| `{name}` | {_cell(paper)} | {_cell(record['claim'])} | {cmd} | "
                    f"{_cell(_hw_text(record))} | {_minutes(record['wall_s'])} ({mode}, {seeds} seeds, "
                    f"commit {str(record.get('commit', '?'))[:10]}) | {result} | **{record['verdict']['verdict']}** |")
        verdicts.append(record["verdict"]["verdict"])
    return "\n".join(rows) + "\n\n" + tally(verdicts)


def refresh(readme: str = README, results: str = RESULTS) -> bool:
    """Rewrite the table between the README's markers from the stored results (atomically);
    returns whether it changed."""
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no lab table markers {BEGIN} ... {END}; add them where the table goes")
    new = pattern.sub(lambda _: f"{BEGIN}\n{table(results, os.path.dirname(os.path.abspath(readme)))}\n{END}", text)
    if new == text:
        return False
    tmp = f"{readme}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(new)
    os.replace(tmp, readme)
    return True


def estimate_s(name: str, mode: str) -> float:
    """A rough CPU time of ``name`` in ``mode`` from its arms x seeds x steps and evaluations, at
    ``STEP_S`` per step and ``EVAL_S`` per evaluation (not a measurement)."""
    arms, schedule, seeds = plan(load(name), mode)
    total = 0.0
    for a in arms:
        evals = 1 + len({s for s in range(1, a.steps + 1) if s % schedule.every == 0 or s == a.steps})
        total += len(seeds) * (a.steps * STEP_S + evals * EVAL_S)
    return total


def listing(mode: str, results: str = RESULTS) -> str:
    lines = []
    for name in NAMES:
        module = load(name)
        arms, schedule, seeds = plan(module, mode)
        state = ", ".join(f"{m}: {r['verdict']['verdict']}" for m in MODES
                          if (r := stored(name, m, results))) or "nothing stored"
        arxiv = f" (arXiv {module.ARXIV})" if module.ARXIV else ""
        lines.append(f"{name:<20} {module.PAPER}{arxiv}\n"
                     f"{'':<20} {len(arms)} arms x {len(seeds)} seeds x {arms[0].steps} steps in {mode}; "
                     f"rough CPU estimate {_minutes(estimate_s(name, mode))}; {state}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"experiments (default: all): {', '.join(NAMES)}")
    ap.add_argument("--mode", default="quick", choices=MODES)
    ap.add_argument("--list", action="store_true", help="list the experiments and what is stored")
    ap.add_argument("--table", action="store_true", help="only refresh the README table")
    ap.add_argument("--results", default=RESULTS, help="where results are stored")
    ap.add_argument("--readme", default=README, help="the README whose lab table is refreshed")
    ap.add_argument("--lab-root", default=None, help="where the smoke lab is built (default runs/lab)")
    a = ap.parse_args(argv)
    unknown = [n for n in a.names if n not in NAMES]
    if unknown:
        ap.error(f"unknown experiment(s) {unknown}; known: {', '.join(NAMES)}")
    if a.list:
        print(listing(a.mode, a.results))
        return
    if not a.table:
        from opd_jax import process
        process.prepare()  # every arm's Trainer compiles the same programs
        for name in a.names or NAMES:
            run(name, a.mode, results=a.results, lab_root=a.lab_root)
    if refresh(a.readme, a.results):
        print(f"refreshed the lab table of {a.readme}")


if __name__ == "__main__":
    sys.exit(main())
