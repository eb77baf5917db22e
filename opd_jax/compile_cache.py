"""A persistent XLA compilation cache for every run, evaluation and lab experiment.

Every lab arm, every seed and every evaluation compiles the same programs again; JAX's
persistent cache, keyed by the compiled program itself (its HLO, the backend and the flags),
lets a second process with the same shapes start without compiling. ``enable()`` turns it on
once per process:

- where it writes: ``$OPD_JAX_COMPILE_CACHE`` if set, else ``$XDG_CACHE_HOME/opd_jax/xla``
  (``~/.cache/opd_jax/xla``); ``OPD_JAX_COMPILE_CACHE=off`` (or ``0``/``none``) disables it;
- a cache directory that the process (or JAX's own ``JAX_COMPILATION_CACHE_DIR``) already set
  is kept, so tests and users who chose a place keep it;
- several processes may share one directory: JAX writes each entry to a temporary file and
  renames it into place, and a reader that finds an entry missing simply compiles.

Entries are only written for programs that took at least ``min_compile_secs`` to compile
(default 0.5 s): the tiny jitted helpers cost more to look up than to build.
"""

from __future__ import annotations

import os

OFF = ("off", "0", "none", "false", "")
ENV = "OPD_JAX_COMPILE_CACHE"


def default_dir(env: dict | None = None) -> str:
    """The per-user cache directory used when neither the environment nor JAX names one."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "opd_jax", "xla")


def resolve(env: dict | None = None) -> str | None:
    """The directory ``enable`` would use given an environment (``None``: the cache is off)."""
    env = os.environ if env is None else env
    if ENV in env:
        value = env[ENV].strip()
        return None if value.lower() in OFF else os.path.expanduser(value)
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return env["JAX_COMPILATION_CACHE_DIR"]
    return default_dir(env)


def enable(path: str | None = None, min_compile_secs: float = 0.5) -> str | None:
    """Turn the persistent compilation cache on; returns the directory in use (or ``None``).

    ``path`` overrides the environment. Call before the first compile; calling again is
    harmless (a directory already configured in this process is kept).
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    where = path if path is not None else resolve()
    if where is None:
        return None
    try:
        os.makedirs(where, exist_ok=True)
    except OSError as e:  # a read-only home must not stop a run: compile as before
        print(f"opd_jax: compilation cache off ({where} is not writable: {e}); "
              f"set {ENV} to a writable directory to turn it on")
        return None
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
    return where
