"""The process-wide settings every entry point applies before JAX creates its client."""

from __future__ import annotations

from opd_jax import compile_cache, host_memory


def prepare() -> str | None:
    """Apply ``$OPD_JAX_HOST_MEMORY`` (``host_memory``), then turn on the persistent compilation
    cache (``compile_cache``); returns the cache directory in use, or None.

    Call before the first array, device query or compile: the allocator policy only reaches
    threads that JAX starts afterwards. Raises ``ValueError`` for an unknown host-memory policy.
    """
    host_memory.keep_freed_memory()
    return compile_cache.enable()
