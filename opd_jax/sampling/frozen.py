"""A model that will not change, laid out for sampling once: ``freeze``.

``sample(graphdef, params, ...)`` takes the trainer's layout, each layer parameter stacked on a
leading ``layers`` axis, and slices (and casts) every layer's weights out of it inside each call:
a fresh copy of the weights per call. For a student that changes between calls that copy is
unavoidable; for a model that does not (an evaluated checkpoint, a teacher that writes answers,
a served or benchmarked model) it is waste, and the first call also pays for mapping that much
fresh memory. ``freeze`` makes the per-layer layout once (``Transformer.decoder()``: per-layer
weights and the output head in the compute dtype), and ``sample`` reads it in place:

    graphdef, params = freeze(*nnx.split(model, nnx.Param))
    rollout = sample(graphdef, params, prompts, mask, key, cfg=cfg)   # or teacher=(graphdef, params)

The frozen pair computes what the model it came from computes, but its prefill runs through the
cached per-layer forward instead of the scanned one, so the two round differently: in float32
they sample the same tokens with log-probabilities equal to rounding; in bf16 a near-tie can
go the other way, and a greedy row can then diverge from there on.
It holds a second copy of the layer weights, in the compute dtype: drop the stacked ``params``
if nothing else needs them. A frozen model is for sampling only; it has no gradients to take.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from flax import nnx

from opd_jax.models.config import ModelConfig
from opd_jax.models.transformer import Decoder


@dataclasses.dataclass(frozen=True)
class FrozenDef:
    """The static half of a frozen model (``freeze``'s first result): its configuration."""

    cfg: ModelConfig


def freeze(graphdef, params) -> tuple[FrozenDef, Decoder]:
    """``(FrozenDef, Decoder)`` for ``graphdef, params = nnx.split(model, nnx.Param)``: the weights
    laid out per layer, once, where they are (sharded parameters stay sharded)."""
    if is_frozen(graphdef):
        raise ValueError("this model is frozen already: pass the (graphdef, params) that freeze returned "
                         "straight to sample")
    model = nnx.merge(graphdef, params)
    if not hasattr(model, "decoder"):
        raise TypeError(f"freeze needs a model with a decoder() method (a Transformer), got {type(model).__name__}")
    # Runtime layer offsets: one slicing kernel per parameter shape, not one per layer.
    layer_ids = tuple(np.int32(i) for i in range(model.cfg.num_layers))
    return FrozenDef(model.cfg), _lay_out(graphdef, params, layer_ids)


@functools.partial(jax.jit, static_argnums=0)
def _lay_out(graphdef, params, layer_ids):
    return nnx.merge(graphdef, params).decoder(None, layer_ids)


def freeze_if_possible(graphdef, params) -> tuple:
    """``freeze(graphdef, params)`` for a model that has a per-layer decoder; anything else (a
    frozen pair, a scripted test model) as it is."""
    if is_frozen(graphdef) or not hasattr(nnx.merge(graphdef, params), "decoder"):
        return graphdef, params
    return freeze(graphdef, params)


def is_frozen(graphdef) -> bool:
    """Whether ``graphdef`` is the static half of a pair that ``freeze`` returned."""
    return isinstance(graphdef, FrozenDef)
