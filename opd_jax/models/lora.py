"""Low-rank adapters (LoRA, Hu et al. 2021, arXiv 2106.09685) on the decoder's weight matrices.

With ``ModelConfig.lora_rank = r > 0`` every target projection ``W`` (``lora_targets``, of
``q, k, v, o, gate, up, down``) gains two stacked factors: ``lora_a_<name>`` (its input axes by
``r``) and ``lora_b_<name>`` (``r`` by its output axes). The layer computes
``x @ W + (alpha / r) * (x @ A) @ B``: the full-sequence forward (training, scoring, prefill)
as written, so the backward pass never forms a gradient of ``W``; the cached ``Decoder`` with
``W + (alpha / r) A B`` merged once per call, so decoding costs what it costs without adapters.
``A`` starts Gaussian with variance ``1 / fan_in``, ``B`` at zero: a fresh adapter changes nothing.
The factors are float32 whatever the parameter dtype, so a bfloat16 frozen model trains float32
adapters. ``attach`` puts adapters on a model's weights as they are (what the trainer does); a
``Transformer`` built with ``lora_rank`` set draws its factors from the same random stream as
its weights, so its later weights differ from the plain model's of the same seed.

Which parameters train is the trainer's business (``opd_jax.training.step``: only the ``lora_``
leaves when there are any); this module knows shapes, the product, merging and attaching.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, SingleDeviceSharding

from opd_jax.models import ops
from opd_jax.models.config import LORA_TARGETS
from opd_jax.sharding import LOGICAL_RULES, logical_to_mesh

TARGETS = LORA_TARGETS  # every weight matrix of a layer: the default
INPUT_AXES = {"o": 2}  # the output projection contracts (heads, head_dim); the rest one axis
PREFIX = "lora_"
FACTOR_DTYPE = jnp.float32  # the factors train in float32 also beside bfloat16 frozen weights


def factor_names(name: str) -> tuple[str, str]:
    return f"{PREFIX}a_{name}", f"{PREFIX}b_{name}"


def is_factor(name: str) -> bool:
    return name.startswith(PREFIX)


def scale(cfg) -> float:
    """The factor of the adapters' product: ``alpha / r``, or ``alpha / sqrt(r)`` (rsLoRA)."""
    return cfg.lora_alpha / (math.sqrt(cfg.lora_rank) if cfg.lora_rslora else cfg.lora_rank)


def factor_shapes(cfg, base_shapes: dict) -> dict:
    """``{lora_a_<t>: (shape, axes), lora_b_<t>: ...}`` for each target ``t`` of ``cfg`` (per layer,
    without the layer axis), from the base weights' ``(shape, logical axes)``."""
    out = {}
    for name in cfg.lora_targets if cfg.lora_rank else ():
        shape, axes = base_shapes[name]
        n_in = INPUT_AXES.get(name, 1)
        a, b = factor_names(name)
        out[a] = (shape[:n_in] + (cfg.lora_rank,), axes[:n_in] + ("lora_rank",))
        out[b] = ((cfg.lora_rank,) + shape[n_in:], ("lora_rank",) + axes[n_in:])
    return out


def init_factor(name: str, key, shape: tuple, dtype):
    """``A``: N(0, 1 / fan_in), its fan-in the product of the input axes; ``B``: zeros. ``shape``
    leads with the layer axis."""
    if name.startswith(PREFIX + "b_"):
        return jnp.zeros(shape, dtype)
    fan_in = math.prod(shape[1:-1])
    return (jax.random.normal(key, shape, jnp.float32) / math.sqrt(fan_in)).astype(dtype)


def factors(cfg, w: dict, name: str):
    """``(A, B, alpha / r)`` of projection ``name`` in the weight dict ``w``, or None."""
    a, b = factor_names(name)
    return (w[a], w[b], scale(cfg)) if a in w else None


def delta(x_MK, adapter):
    """``s * (x @ A) @ B`` for 2-D ``x [tokens, fan_in]``, ``adapter = (A, B, s)``; ``[tokens, fan_out]``."""
    a, b, s = adapter
    low = ops.matmul(x_MK, a.reshape(-1, a.shape[-1]).astype(x_MK.dtype))
    return ops.matmul(low * jnp.asarray(s, low.dtype), b.reshape(b.shape[0], -1).astype(x_MK.dtype))


def merged_weights(cfg, w: dict) -> dict:
    """One layer's (or the stacked) weight dict with each adapter folded into its weight
    (``W + s A B``, summed in float32, returned in ``W``'s dtype) and no ``lora_`` entries."""
    out = {k: v for k, v in w.items() if not is_factor(k)}
    for name in cfg.lora_targets if cfg.lora_rank else ():
        a, b = (w[f].astype(jnp.float32) for f in factor_names(name))
        lead = a.ndim - INPUT_AXES.get(name, 1) - 1  # 1 with the layer axis, else 0
        a2 = a.reshape(*a.shape[:lead], -1, a.shape[-1])
        b2 = b.reshape(*b.shape[:lead + 1], -1)
        product = jnp.matmul(a2, b2).reshape(w[name].shape) * scale(cfg)
        out[name] = (w[name].astype(jnp.float32) + product).astype(w[name].dtype)
    return out


def _rebuild(model, cfg, value):
    """A ``Transformer`` of ``cfg`` whose every parameter at ``path`` is ``value(path, shape)``,
    keeping ``model``'s source config (what an export carries through)."""
    from opd_jax.models.transformer import Transformer

    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    flat = [(path, var.replace(value(path, var.get_value().shape))) for path, var in nnx.to_flat_state(state)]
    out = nnx.merge(graphdef, nnx.from_flat_state(flat))
    if hasattr(model, "source_hf_config"):
        out.source_hf_config = model.source_hf_config
    return out


def attach(model, *, rank: int, alpha: float, targets=TARGETS, seed: int = 0, mesh=None,
           rules=LOGICAL_RULES, rslora: bool = False):
    """``model`` (a ``Transformer`` without adapters) with fresh adapters of ``rank`` on
    ``targets`` (scaled ``alpha / r``, or ``alpha / sqrt(r)`` with ``rslora``): the same weights
    (the same arrays, not copies), a config that says so, and the
    factors placed like the weights they adapt (on ``mesh`` under ``rules``, else on the first
    local device). The result equals ``model`` until the factors train."""
    from opd_jax.models.transformer import layer_param_shapes

    if model.cfg.lora_rank:
        raise ValueError(f"the model already has adapters of rank {model.cfg.lora_rank}")
    cfg = model.cfg.replace(lora_rank=rank, lora_alpha=float(alpha), lora_targets=tuple(targets), lora_rslora=rslora)
    base = dict(nnx.to_flat_state(nnx.state(model)))
    shapes = factor_shapes(cfg, layer_param_shapes(model.cfg))
    keys = dict(zip(shapes, jax.random.split(jax.random.key(seed), len(shapes))))

    def value(path, shape):
        if path in base:
            return base[path].get_value()
        name, (_, axes) = path[-1], shapes[path[-1]]
        sharding = (SingleDeviceSharding(jax.local_devices()[0]) if mesh is None
                    else NamedSharding(mesh, logical_to_mesh(("layers", *axes), rules)))
        init = jax.jit(init_factor, static_argnums=(0, 2, 3), out_shardings=sharding)
        return init(name, keys[name], shape, FACTOR_DTYPE)

    return _rebuild(model, cfg, value)


def merge_into_base(model):
    """A ``Transformer`` without adapters whose weights are ``model``'s with its adapters folded in
    (what an export writes); ``model`` itself when it has none."""
    if not model.cfg.lora_rank:
        return model
    layers = {k: v[...] for k, v in vars(model.layers).items() if isinstance(v, nnx.Variable)}
    folded = merged_weights(model.cfg, layers)
    src = dict(nnx.to_flat_state(nnx.state(model)))
    return _rebuild(model, model.cfg.replace(lora_rank=0, lora_targets=()),
                    lambda path, _: folded[path[1]] if path[0] == "layers" and path[1] in folded
                    else src[path].get_value())
