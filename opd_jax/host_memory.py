"""How the process's C allocator serves XLA:CPU's large per-call buffers: ``$OPD_JAX_HOST_MEMORY``.

XLA:CPU allocates each call's outputs and its scratch buffer (hundreds of MB for a ~100M
model's train step) with ``malloc`` from its worker threads, and frees them when the call ends.
glibc serves blocks that large with a fresh ``mmap`` and hands them back to the kernel with
``munmap`` when they are freed, so the next call touches brand-new pages again: ~545,000 faults
of 4 KB pages (~2.2 GB) per ~100M train step (4 x 256 tokens). On the virtual machine of our
benchmarks a fault is slow: it took the step from 2.2 s to 2.7-3.3 s alone in its process, and to
7.9 s beside PyTorch in ``benchmarks/bench_model.py`` (BENCHMARKS.md). Three policies:

- ``hugepages`` (the default): glibc asks the kernel for transparent huge pages for its heap and
  its mapped blocks (the ``glibc.malloc.hugetlb=1`` tunable, glibc 2.35 and later, with the
  kernel's ``transparent_hugepage`` mode ``madvise`` or ``always``). A fresh block is then faulted
  in 2 MB at a time, 512 times fewer faults, and memory is still handed back as before: a ~100M
  step alone took 2.13 s with ~1,500 faults and at most 4.0 GB resident (the system allocator:
  2.65 s, 3.9 GB; ``benchmarks/host_memory_growth.py``). Beside PyTorch in one process it gains
  less: ``bench_model.py``'s ~100M step at 0.93x PyTorch's, against 0.59x with the system
  allocator and 1.56x kept (BENCHMARKS.md).
  glibc reads tunables only when a process starts, so the process is started again with
  ``GLIBC_TUNABLES`` set (``relaunch_environment()``, used by ``opd_jax.process.relaunch()``):
  every ``python -m opd_jax…`` command does this when the package is imported, before anything heavy.
- ``keep``: ``keep_freed_memory()`` tells glibc to serve every thread from its one main heap
  (``M_ARENA_MAX`` 1), never to ``mmap`` a block (``M_MMAP_MAX`` 0) and never to give the top of
  the heap back (``M_TRIM_THRESHOLD`` -1), so freed blocks are reused: no faults at all once warm
  (2.2 s). The price: the heap grows past the largest calls and keeps it until the process exits
  (3.9 to 6.0 GB over 30 ~100M steps in one run, 3.7 to 7.9 GB in another, each growth a slow step
  of its own). glibc 2.36 pads 64-byte-aligned requests (XLA's) by the alignment, so a freed
  block of the same size does not fit the next request; a loop of 128 MB blocks holds two at
  16-byte alignment and keeps growing at 64. It must run before JAX creates its CPU client (a
  worker thread keeps the arena it first allocated from); ``opd_jax.process.prepare()`` does.
- ``system``: the allocator as the process started.

Elsewhere than Linux with glibc none of this does anything. ``python -m opd_jax`` prints the
policy and what is in effect.
"""

from __future__ import annotations

import ctypes
import os
import platform

ENV = "OPD_JAX_HOST_MEMORY"
HUGEPAGES, KEEP, SYSTEM = "hugepages", "keep", "system"
TUNABLE = "glibc.malloc.hugetlb"  # 1: madvise(MADV_HUGEPAGE) on the heap and on mmapped blocks
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
# mallopt(3) parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8

_applied: bool | None = None


def policy(env: dict | None = None) -> str:
    """``hugepages`` (the default), ``keep`` or ``system``, from ``$OPD_JAX_HOST_MEMORY``."""
    env = os.environ if env is None else env
    value = env.get(ENV, HUGEPAGES).strip().lower() or HUGEPAGES
    if value not in (HUGEPAGES, KEEP, SYSTEM):
        raise ValueError(f"{ENV}={env[ENV]!r}: use {HUGEPAGES!r} (transparent huge pages for malloc, the "
                         f"default), {KEEP!r} (keep freed memory for reuse) or {SYSTEM!r} (leave the C "
                         "allocator as it is)")
    return value


def _glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def transparent_hugepages(path: str = THP_MODE) -> str | None:
    """The kernel's transparent huge page mode (``always``, ``madvise`` or ``never``), None if unknown."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def tunable_set(env: dict | None = None) -> str | None:
    """The value ``$GLIBC_TUNABLES`` gives ``glibc.malloc.hugetlb``, None if it names none."""
    env = os.environ if env is None else env
    for item in env.get("GLIBC_TUNABLES", "").split(":"):
        key, _, value = item.partition("=")
        if key.strip() == TUNABLE:
            return value.strip()
    return None


def relaunch_environment(env: dict | None = None, thp_mode: str | None = "read") -> dict | None:
    """The environment to start this program again under so that the ``hugepages`` policy takes
    effect, or None when nothing is to change: another policy (an unknown one included: the entry
    point reports it), not glibc, the kernel's huge pages off (``never``) or unknown, or
    ``$GLIBC_TUNABLES`` already naming ``glibc.malloc.hugetlb`` (whatever its value: the user's word).
    """
    env = dict(os.environ if env is None else env)
    try:
        if policy(env) != HUGEPAGES:
            return None
    except ValueError:
        return None
    mode = transparent_hugepages() if thp_mode == "read" else thp_mode
    if not _glibc() or mode not in ("always", "madvise") or tunable_set(env) is not None:
        return None
    tunables = env.get("GLIBC_TUNABLES", "")
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
    return env


def keep_freed_memory(env: dict | None = None) -> bool:
    """Apply the ``keep`` policy once per process if ``$OPD_JAX_HOST_MEMORY`` asks for it; True if
    glibc now keeps freed memory.

    Calling again is harmless (the first call decides). Raises ``ValueError`` for an unknown
    ``$OPD_JAX_HOST_MEMORY``.
    """
    global _applied
    if _applied is not None:
        return _applied
    wanted = policy(env)  # an unknown value raises here, and a later call raises again
    _applied = False
    if wanted != KEEP or not _glibc():
        return False
    libc = ctypes.CDLL(None)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; each setting stands alone, so apply all and require all
    _applied = all([mallopt(_M_ARENA_MAX, 1) == 1, mallopt(_M_MMAP_MAX, 0) == 1,
                    mallopt(_M_TRIM_THRESHOLD, -1) == 1])
    return _applied


def in_effect() -> str:
    """What this process's allocator does, in words: for a log line or a benchmark's header."""
    if _applied:
        return "freed memory kept for reuse (OPD_JAX_HOST_MEMORY=keep)"
    value = tunable_set()
    if value not in (None, "0") and _glibc():
        return (f"transparent huge pages for malloc ({TUNABLE}={value}; kernel mode "
                f"{transparent_hugepages()})")
    return "the system allocator's defaults"
