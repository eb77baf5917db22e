"""Process-wide settings: the environment a program starts under, and what every entry point
applies before JAX creates its client."""

from __future__ import annotations

import os
import sys

from opd_jax import compile_cache, host_memory

_OPTIONS_WITH_A_VALUE = ("-W", "-X", "-Q")


def entry_module(argv: list[str]) -> str | None:
    """The module a Python command line (``sys.orig_argv``) runs with ``-m``; None for a script,
    ``-c`` or the interactive interpreter."""
    args = iter(argv[1:])
    for arg in args:
        if arg == "-m":
            return next(args, None)
        if arg.startswith("-m"):  # -mpackage.module
            return arg[2:]
        if arg in _OPTIONS_WITH_A_VALUE:
            next(args, None)
        elif arg == "-c" or not arg.startswith("-") or arg in ("-", "--"):
            return None
    return None


def relaunch(argv: list[str] | None = None) -> None:
    """Start this program again (same interpreter, command line, working directory and open files)
    if the host-memory policy needs an environment it did not start under: glibc reads
    ``GLIBC_TUNABLES`` only when a process starts (``host_memory.relaunch_environment``).

    Returns at once when there is nothing to change. Otherwise it replaces the running process, so
    call it first thing in a program, never from a library call or a test's process. Every
    ``python -m opd_jax…`` command calls it when the package is imported; a script of your own
    can call it at its top.
    """
    argv = list(getattr(sys, "orig_argv", [])) if argv is None else argv
    env = host_memory.relaunch_environment()
    if env is None or not argv:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


def prepare() -> str | None:
    """Apply ``$OPD_JAX_HOST_MEMORY`` (``host_memory``), then turn on the persistent compilation
    cache (``compile_cache``); returns the cache directory in use, or None.

    Call before the first array, device query or compile: the allocator policy only reaches
    threads that JAX starts afterwards. Raises ``ValueError`` for an unknown host-memory policy.
    """
    host_memory.keep_freed_memory()
    return compile_cache.enable()
