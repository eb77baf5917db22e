"""Parameter extrapolation along the update direction (EffOPD, Cai et al., arXiv 2605.11739),
as an Optax transform wrapped around the optimizer.

EffOPD observes that on-policy distillation's update direction settles early, and speeds OPD up
by moving the parameters further along the current update direction with an adaptively chosen
step. The paper's exact rule is not in our sources (``objectives_2026.md`` marks its form as
inferred); this module holds two readings of it, with the choices as arguments:

- The optimizer's updates are summed over windows of ``every`` steps: the window's displacement
  ``D`` (what the optimizer moved the parameters by over those steps). At the end of each window
  that step's update gains ``eta * D``: the parameters jump ``eta`` times the window's
  displacement further along it. Between the windows' ends the updates pass through unchanged,
  and the jumps are kept out of the windows' sums, so a jump never feeds the next one.
- ``rule="cosine"``: ``eta = max_scale * max(0, cos(D_k, D_{k-1}))``, as long a step as the
  direction has held between the last two windows; nothing where it turned by 90 degrees or
  more, or at the first window, which has no predecessor.
- ``rule="secant"``: a line search along ``D`` from the gradients the window saw, no extra
  forward pass. The loss's slope along ``D`` is ``a = <g_first, D>`` where the window started
  and ``b = <g_last, D>`` at its last step, a fraction ``s = <D - u_last, D> / <D, D>`` of the
  way; the secant through them reaches zero slope at ``t* = a s / (a - b)``, and
  ``eta = clip(t* - 1, 0, max_scale)``: a jump only while the loss still falls at the end of
  the window (``b < 0``) and its slope is flattening (``a < b``). On a quadratic whose
  optimizer path is a straight line this lands on the line's minimum exactly (tested).

The state holds the current window's sum and, per rule, the last window's sum or the window's
first gradient (parameter-shaped, placed like the parameters by :func:`optax.tree_map_params`);
``extrapolation_scale`` is the last jump's ``eta`` (the train step reports it as
``opt/extrapolation_scale``).
"""

import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

STATE_SCALE = "extrapolation_scale"  # the state field the train step reports
RULES = ("cosine", "secant")


class ExtrapolationState(NamedTuple):
    inner: Any  # the wrapped optimizer's state
    count: jax.Array  # updates seen (int32)
    window: Any  # the sum of this window's updates, parameter-shaped
    previous: Any  # cosine: the last complete window's sum (zeros before the first); else ()
    first_grad: Any  # secant: the gradient at this window's first step; else ()
    extrapolation_scale: jax.Array  # eta of the last jump (0 before any)


def _f32(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


def _dot(a, b):
    return otu.tree_vdot(_f32(a), _f32(b))


def _cosine_eta(window, previous, max_scale):
    norms = otu.tree_norm(_f32(window)) * otu.tree_norm(_f32(previous))
    cos = jnp.where(norms > 0, _dot(window, previous) / jnp.where(norms > 0, norms, 1.0), 0.0)
    return max_scale * jnp.clip(cos, 0.0, 1.0)


def _secant_eta(window, before_last, first_grad, last_grad, max_scale):
    dd = _dot(window, window)
    a, b = _dot(first_grad, window), _dot(last_grad, window)
    s = _dot(before_last, window) / jnp.where(dd > 0, dd, 1.0)
    ok = (dd > 0) & (b < 0) & (a < b)
    t_star = a * s / jnp.where(ok, a - b, -1.0)
    return jnp.where(ok, jnp.clip(t_star - 1.0, 0.0, max_scale), 0.0)


def extrapolate(inner: optax.GradientTransformation, every: int, max_scale: float,
                rule: Literal["cosine", "secant"] = "cosine") -> optax.GradientTransformation:
    """``inner`` whose update, every ``every`` steps, gains ``eta * D``, ``D`` the sum of the
    window's ``every`` updates and ``eta`` from ``rule`` (see the module docstring)."""
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"every must be an int >= 1 (updates per window), got {every!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule == "secant" and every < 2:
        raise ValueError("the secant rule needs windows of at least 2 steps (two gradients along "
                         f"the window's displacement), got every={every}")
    if not isinstance(max_scale, (int, float)) or not math.isfinite(max_scale) or max_scale < 0:
        raise ValueError(f"max_scale must be a finite number >= 0, got {max_scale!r}")
    cosine = rule == "cosine"

    def init(params):
        zeros = lambda: otu.tree_zeros_like(params)  # noqa: E731
        return ExtrapolationState(inner=inner.init(params), count=jnp.zeros((), jnp.int32),
                                  window=zeros(), previous=zeros() if cosine else (),
                                  first_grad=() if cosine else zeros(),
                                  extrapolation_scale=jnp.zeros((), jnp.float32))

    def update(grads, state, params=None):
        updates, inner_state = inner.update(grads, state.inner, params)
        window = otu.tree_add(state.window, updates)
        starts, count = state.count % every == 0, state.count + 1
        ends = count % every == 0
        if cosine:
            at_end = lambda: _cosine_eta(window, state.previous, max_scale)  # noqa: E731
            previous, first_grad = otu.tree_where(ends, window, state.previous), ()
        else:
            first = otu.tree_where(starts, grads, state.first_grad)
            at_end = lambda: _secant_eta(window, state.window, first, grads, max_scale)  # noqa: E731
            previous, first_grad = (), first
        # the dot products over every parameter only where a window ends
        eta = jax.lax.cond(ends, lambda: at_end().astype(jnp.float32), lambda: jnp.zeros((), jnp.float32))
        out = jax.tree.map(lambda u, w: u + (eta * w).astype(u.dtype), updates, window)
        new = ExtrapolationState(
            inner=inner_state, count=count,
            window=otu.tree_where(ends, otu.tree_zeros_like(window), window), previous=previous,
            first_grad=first_grad, extrapolation_scale=jnp.where(ends, eta, state.extrapolation_scale))
        return out, new

    return optax.GradientTransformation(init, update)


def last_scale(opt_state) -> jax.Array | None:
    """The last jump's ``eta`` held in an optimizer state that contains :func:`extrapolate`'s,
    else None."""
    found = otu.tree_get_all_with_path(opt_state, STATE_SCALE)
    return found[0][1] if found else None
