"""Trace-time argument checks shared by the objective functions.

Everything here runs while JAX traces (shapes and Python scalars are concrete), so a bad
argument fails before any compilation, with a message that names the argument.
"""

from typing import Any

import jax
import jax.numpy as jnp


def is_concrete(x: Any) -> bool:
    """True when ``x`` is a Python/NumPy scalar whose value is known at trace time."""
    try:
        float(x)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return False
    return True


def check_temperature(temperature: Any, name: str = "temperature") -> None:
    if is_concrete(temperature) and not float(temperature) > 0:
        raise ValueError(f"{name} must be > 0, got {temperature}. Use 1.0 for untempered "
                         "distributions; a temperature of 0 (greedy) has no log-probabilities.")


def check_unit_interval(value: Any, name: str) -> None:
    if is_concrete(value) and not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}.")


def check_logits_pair(logits: jax.Array, teacher_logits: jax.Array,
                      names: tuple[str, str] = ("logits", "teacher_logits")) -> None:
    a, b = names
    if logits.ndim < 1 or teacher_logits.ndim < 1:
        raise ValueError(f"{a} and {b} need a vocabulary axis; got shapes "
                         f"{logits.shape} and {teacher_logits.shape}.")
    if logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"vocabulary sizes differ: {a} has V={logits.shape[-1]}, {b} has "
            f"V={teacher_logits.shape[-1]}. Student and teacher must share one tokenizer; if one "
            "checkpoint pads its embedding table, slice both logits to the tokenizer's size.")
    if logits.shape != teacher_logits.shape:
        raise ValueError(f"shapes differ: {a} {logits.shape} vs {b} {teacher_logits.shape}; "
                         "both must be [..., V] over the same positions.")


def check_where(where: jax.Array | None, batch_shape: tuple[int, ...], name: str = "where") -> None:
    if where is not None and tuple(jnp.shape(where)) != tuple(batch_shape):
        raise ValueError(f"{name} has shape {jnp.shape(where)}, expected {tuple(batch_shape)} "
                         "(the input's shape without its vocabulary axis).")


def check_same_shape(**arrays: jax.Array) -> None:
    shapes = {k: tuple(jnp.shape(v)) for k, v in arrays.items() if v is not None}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise ValueError(f"per-token inputs must have the same shape, got {listing}.")


def check_k(k: int, vocab: int, name: str = "k") -> None:
    if not isinstance(k, int) or isinstance(k, bool):
        raise TypeError(f"{name} must be a Python int (it fixes an array shape), got {type(k).__name__}.")
    if not 1 <= k <= vocab:
        raise ValueError(f"{name}={k} must lie in [1, V] with V={vocab} (the vocabulary size).")


def check_fraction(frac: Any, name: str) -> None:
    if is_concrete(frac) and not 0.0 < float(frac) <= 1.0:
        raise ValueError(f"{name} must lie in (0, 1], got {frac}.")
