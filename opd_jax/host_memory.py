"""Optionally keep freed host memory in the process, so XLA:CPU does not page-fault it in on every call.

XLA:CPU allocates each call's outputs and its scratch buffer (hundreds of MB for a ~100M
model's train step) with ``malloc`` from its worker threads, and frees them when the call ends.
glibc serves blocks that large with a fresh ``mmap`` and hands them back to the kernel with
``munmap`` when they are freed, so the next call touches brand-new pages again: ~2.2 GB of page
faults per ~100M train step (4 x 256 tokens). On the virtual machine of our benchmarks a fault on
memory new to the process is slow, and that took the step from 2.2 s to 2.7 s alone, to
7.9 s beside PyTorch in ``benchmarks/bench_model.py`` (BENCHMARKS.md).

With ``OPD_JAX_HOST_MEMORY=keep``, ``keep_freed_memory()`` tells glibc to serve every thread from
its one main heap (``M_ARENA_MAX`` 1: a thread's own arena would still ``mmap`` blocks above
its 64 MB heaps), never to ``mmap`` a block (``M_MMAP_MAX`` 0) and never to give the top of the
heap back to the kernel (``M_TRIM_THRESHOLD`` -1). Freed blocks are then reused by later calls.

The price, measured (``benchmarks/host_memory_growth.py``): the process keeps the memory of its
largest calls until it exits, and the heap grows past them. A ~100M train step's resident memory
grew from 3.9 to 6.0 GB over 30 steps in one run and from 3.7 to 7.9 GB in another (the system
allocator: flat), each growth a slow step of its own. The cause is glibc's aligned allocation (2.36): XLA asks for 64-byte-aligned
blocks and glibc pads such a request by the alignment, so a freed block of the same size does not
fit the next request; a loop of 128 MB blocks holds two at 16-byte alignment and keeps growing at
64. That is why it is opt-in: the default, ``system``, leaves the allocator as it is.

It must run before JAX creates its CPU client (the first array, device query or compile): a
worker thread keeps the arena it first allocated from. Our entry points call it first thing.
Elsewhere than Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

ENV = "OPD_JAX_HOST_MEMORY"
KEEP, SYSTEM = "keep", "system"
# mallopt(3) parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8

_applied: bool | None = None


def policy(env: dict | None = None) -> str:
    """``system`` (the default) or ``keep``, from ``$OPD_JAX_HOST_MEMORY``."""
    env = os.environ if env is None else env
    value = env.get(ENV, SYSTEM).strip().lower() or SYSTEM
    if value not in (KEEP, SYSTEM):
        raise ValueError(f"{ENV}={env[ENV]!r}: use {SYSTEM!r} (leave the C allocator as it is, the default) "
                         f"or {KEEP!r} (keep freed memory for reuse)")
    return value


def keep_freed_memory(env: dict | None = None) -> bool:
    """Apply ``$OPD_JAX_HOST_MEMORY`` once per process; True if glibc now keeps freed memory.

    Calling again is harmless (the first call decides). Raises ``ValueError`` for an unknown
    ``$OPD_JAX_HOST_MEMORY``.
    """
    global _applied
    if _applied is not None:
        return _applied
    wanted = policy(env)  # an unknown value raises here, and a later call raises again
    _applied = False
    if wanted == SYSTEM or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
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
