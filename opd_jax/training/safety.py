"""What keeps a run's directory true: resume checks, configuration changes, non-finite stops.

Every check here runs before the run writes anything it checks against, so a refused run leaves
its work directory exactly as it found it.
"""

import dataclasses
import json
import math
import os
import time
from typing import Any

import opd_jax.objectives as O
from opd_jax.config import to_dict
from opd_jax.training.checkpoint import CheckpointNotFound, Checkpointer

# Settings that change how a run is executed, logged or saved, not what it trains: a resumed run
# may change them freely. An entry ending in "." covers a whole section (the mesh: a checkpoint
# restores onto any mesh; the held-out evaluation). Where a served teacher runs and how it is
# asked are the run's too, and so are the exports of the student. The reward function (``reward``)
# is the run's when the objective trains on no reward (it then only scores evaluations).
RUN_ONLY = ("run.steps", "run.workdir", "run.log_every", "run.tensorboard", "run.wandb",
            "run.progress", "run.diagnostics_k", "run.allow_config_change", "ckpt.every",
            "ckpt.keep", "ckpt.async_save", "ckpt.resume_step", "ckpt.export", "ckpt.export_every",
            "ckpt.export_dtype", "mesh.", "eval.", "teacher.served.url",
            "teacher.served.timeout_s", "teacher.served.retries", "teacher.served.backoff_s",
            "teacher.served.max_in_flight", "teacher.served.rows_per_request")


class ConfigChangedError(ValueError):
    """A resumed run's configuration differs from its checkpoint's."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``to_dict`` output → ``{"section.field": value}``; a dataclass's type is the value of its
    own path (``"objective": "GKDConfig"``), list items are ``path[i]``."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            if k == "_type":
                out[prefix or k] = v
            else:
                out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    if isinstance(tree, list) and any(isinstance(x, (dict, list)) for x in tree):
        out = {}
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: tree}


def _run_only(path: str) -> bool:
    return any(path.startswith(p) if p.endswith(".") else path == p for p in RUN_ONLY)


def _relative(value: Any, workdir: str) -> Any:
    """A path inside the run's directory, as ``<workdir>/...`` (a moved or copied run directory
    keeps its own files)."""
    if isinstance(value, str) and workdir and os.path.isabs(value):
        root = os.path.abspath(workdir)
        if os.path.commonpath([root, os.path.abspath(value)]) == root:
            return "<workdir>/" + os.path.relpath(value, root)
    return value


def field_defaults(cfg, prefix: str = "") -> dict[str, Any]:
    """The declared default of every field of a (nested) config, keyed like :func:`flatten`."""
    out = {}
    for f in dataclasses.fields(cfg):
        path = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(cfg, f.name)
        if f.default is not dataclasses.MISSING:
            out[path] = to_dict(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[path] = to_dict(f.default_factory())
        default = out.get(path)
        if isinstance(default, dict) and "_type" in default:  # a section: its type, then fields
            out[path] = default["_type"]
        elif isinstance(default, dict):  # a mapping: its entries, as flatten keys them
            del out[path]
            out.update(flatten(default, path))
        if dataclasses.is_dataclass(value):
            out.update(field_defaults(value, path))
    return out


def config_changes(saved: dict, current: dict,
                   defaults: dict[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved value, current value)}`` for every setting that differs, except the
    run-only ones (:data:`RUN_ONLY`). ``saved`` and ``current`` are ``to_dict`` views of
    experiments; paths inside each run's own work directory compare relative to it. A setting
    the saved configuration lacks (one added to the code since) counts as unchanged while it
    holds its default (``defaults``, see :func:`field_defaults`)."""
    def view(cfg):
        workdir = (cfg.get("run") or {}).get("workdir", "")
        return {k: _relative(v, workdir) for k, v in flatten(cfg).items() if not _run_only(k)}
    a, b = view(saved), view(current)
    defaults = defaults or {}
    missing = object()
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)
            and not (k not in a and k in defaults and b[k] == defaults[k])}


def check_config_change(saved: dict | None, current, *, step: int, allow: bool,
                        where: str) -> dict | None:
    """Refuse to resume checkpoint ``step`` (saved with config ``saved``) under the experiment
    ``current``, unless ``allow``; then return the history entry that records the change (None:
    no change)."""
    if saved is None:
        return None
    changes = config_changes(saved, to_dict(current), field_defaults(current))
    if "reward" not in O.required_inputs(current.objective):
        changes.pop("reward", None)  # evaluation's only: the objective trains on no reward
    if not changes:
        return None
    if not allow:
        lines = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
        raise ConfigChangedError(
            f"the run in {where} was trained up to step {step} with another configuration; "
            f"these settings differ from its checkpoint's:\n{lines}\nResume with the saved "
            "settings, use a new work directory, or pass --set run.allow_config_change=true to "
            "continue with the new ones (the change is recorded in config.json).")
    return {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "changes": {k: [old, new] for k, (old, new) in changes.items()}}


def config_history(path: str) -> list:
    """The configuration changes recorded in a run's ``config.json`` so far."""
    try:
        with open(path) as f:
            return list(json.load(f).get("history", []))
    except (OSError, ValueError, AttributeError):
        return []


def config_record(exp, ckpt: Checkpointer) -> dict:
    """``config.json``: the resolved experiment ``exp`` and the history of allowed changes; a
    resumed run whose configuration differs from its checkpoint's is refused here, before
    anything in the work directory is written."""
    history = config_history(os.path.join(exp.run.workdir, "config.json"))
    step = exp.ckpt.resume_step if exp.ckpt.resume_step is not None else ckpt.latest_step()
    if step is not None:
        saved = ckpt.meta(step).get("config")
        entry = check_config_change(saved, exp, step=step, allow=exp.run.allow_config_change,
                                    where=exp.run.workdir)
        history += [entry] if entry else []
    return {**to_dict(exp), **({"history": history} if history else {})}


def check_resume_step(ckpt: Checkpointer, step: int | None) -> None:
    """``ckpt.resume_step`` names a finished checkpoint with none after it."""
    have = ckpt.all_steps()
    if step is not None and step not in have:
        raise CheckpointNotFound(f"no checkpoint for step {step} in {ckpt.directory}; "
                                 f"available: {have} (ckpt.resume_step)")
    later = [s for s in have if step is not None and s > step]
    if later:
        raise ValueError(f"ckpt.resume_step={step}, but {ckpt.directory} also holds the later "
                         f"checkpoints {later}, which this run would not save over; move them "
                         "out of the directory (or unset ckpt.resume_step).")


def check_finite(metrics: dict[str, float], step: int, ckpt: Checkpointer) -> None:
    """Stop before a non-finite loss or update reaches a checkpoint (the state is not saved)."""
    bad = [k for k in ("loss/total", "opt/grad_norm", "opt/update_norm")
           if not math.isfinite(metrics[k])]
    if bad:
        last = ckpt.latest_step()
        raise FloatingPointError(
            f"{bad[0]} is {metrics[bad[0]]} at step {step}; stopping without saving. The last "
            f"good checkpoint ({'none' if last is None else f'step {last}'}) in "
            f"{ckpt.directory} is intact; lower optim.lr or check the data.")
