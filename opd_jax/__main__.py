"""``python -m opd_jax``: the version, and the process-wide settings a run would use here."""

import sys

from opd_jax import __version__, compile_cache, host_memory

if __name__ == "__main__":
    try:
        policy = host_memory.policy()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    host_memory.keep_freed_memory()
    print(f"opd_jax {__version__}")
    print(f"host memory: {host_memory.ENV}={policy}; in effect: {host_memory.in_effect()}")
    print(f"compilation cache: {compile_cache.resolve() or 'off'}")
