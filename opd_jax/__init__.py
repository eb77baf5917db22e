"""opd_jax: on-policy distillation of language models in JAX/Flax."""

import sys as _sys

from opd_jax import process as _process

__version__ = "0.1.0"

# A ``python -m opd_jax…`` command starts again under the environment its host-memory policy
# needs (opd_jax.host_memory), before it imports anything heavy; an import elsewhere changes nothing.
if (_process.entry_module(getattr(_sys, "orig_argv", [])) or "").split(".")[0] == "opd_jax":
    _process.relaunch()
