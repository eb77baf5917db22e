"""Parameter extrapolation along the update direction (EffOPD, Cai et al., arXiv 2605.11739),
as an Optax transform placed after the optimizer.

EffOPD observes that on-policy distillation's update direction settles early, and speeds OPD up
by moving the parameters further along the current update direction with an adaptively chosen
step. The paper's exact rule is not in our sources (``objectives_2026.md`` marks its form as
inferred); this module is our reading of it, with the choices as arguments:

- The optimizer's updates are summed over windows of ``every`` steps: the window's displacement
  ``D_k`` (what the optimizer moved the parameters by over those steps).
- At the end of each window the update of that step gains ``eta_k * D_k``: the parameters jump
  ``eta_k`` times the window's displacement further along it.
- ``eta_k = max_scale * max(0, cos(D_k, D_{k-1}))``: the step is as long as the direction has
  held between the last two windows, and nothing where it turned by 90 degrees or more (or at
  the first window, which has no predecessor). The jumps are kept out of the windows' sums, so a
  jump never feeds the next one.

Between the windows' ends the updates pass through unchanged. The state holds two
parameter-shaped sums (the current window's and the last one's), placed like the parameters by
:func:`optax.tree_map_params`; ``extrapolation_scale`` is the last jump's ``eta`` (the training
step reports it as ``opt/extrapolation_scale``).
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

STATE_SCALE = "extrapolation_scale"  # the state field the train step reports


class ExtrapolationState(NamedTuple):
    count: jax.Array  # updates seen (int32)
    window: Any  # the sum of this window's updates, parameter-shaped
    previous: Any  # the last complete window's sum, parameter-shaped (zeros before the first)
    extrapolation_scale: jax.Array  # eta of the last jump (0 before any)


def extrapolate(every: int, max_scale: float) -> optax.GradientTransformation:
    """Every ``every`` updates, add ``max_scale * max(0, cos(D_k, D_{k-1})) * D_k`` to that
    step's update, ``D_k`` the sum of the window's ``every`` updates (see the module docstring)."""
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"every must be an int >= 1 (updates per window), got {every!r}")
    if not isinstance(max_scale, (int, float)) or not math.isfinite(max_scale) or max_scale < 0:
        raise ValueError(f"max_scale must be a finite number >= 0, got {max_scale!r}")

    def init(params):
        return ExtrapolationState(count=jnp.zeros((), jnp.int32), window=otu.tree_zeros_like(params),
                                  previous=otu.tree_zeros_like(params),
                                  extrapolation_scale=jnp.zeros((), jnp.float32))

    def update(updates, state, params=None):
        del params
        window = otu.tree_add(state.window, updates)
        count = state.count + 1
        ends = count % every == 0
        f32 = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)  # noqa: E731
        dot = otu.tree_vdot(f32(window), f32(state.previous))
        norms = otu.tree_norm(f32(window)) * otu.tree_norm(f32(state.previous))
        cos = jnp.where(norms > 0, dot / jnp.where(norms > 0, norms, 1.0), 0.0)
        eta = jnp.where(ends, max_scale * jnp.clip(cos, 0.0, 1.0), 0.0).astype(jnp.float32)
        out = jax.tree.map(lambda u, w: u + (eta * w).astype(u.dtype), updates, window)
        new = ExtrapolationState(
            count=count, window=otu.tree_where(ends, otu.tree_zeros_like(window), window),
            previous=otu.tree_where(ends, window, state.previous),
            extrapolation_scale=jnp.where(ends, eta, state.extrapolation_scale))
        return out, new

    return optax.GradientTransformation(init, update)


def last_scale(opt_state) -> jax.Array | None:
    """The last jump's ``eta`` held in an optimizer state that contains :func:`extrapolate`'s,
    else None."""
    found = otu.tree_get_all_with_path(opt_state, STATE_SCALE)
    return found[0][1] if found else None
