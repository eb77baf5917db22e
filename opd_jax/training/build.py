"""Build the student and teacher of an experiment on a mesh: load a checkpoint or initialise."""

import dataclasses

import jax
from flax import nnx

from opd_jax.models import Transformer, from_pretrained, lora, lora_io
from opd_jax.sharding import logical_sharding
from opd_jax.training.config import ModelSpec


def model_shardings(abstract_model, mesh):
    """The ``NamedSharding`` of every parameter, from its logical axis names."""
    return logical_sharding(nnx.get_partition_spec(nnx.state(abstract_model, nnx.Param)), mesh)


def build_model(spec: ModelSpec, mesh):
    """``(graphdef, params, shardings)`` with every parameter already in its sharding.

    A checkpoint is read tensor by tensor straight into place (``from_pretrained``); a random
    init runs as one jitted function with the parameters' shardings as its outputs, after
    ``nnx.eval_shape`` found the shapes, so no host ever holds the whole model.
    """
    check_start_adapters(spec)  # before anything is built
    if spec.path:
        model = from_pretrained(spec.path, param_dtype=spec.param_dtype, dtype=spec.dtype,
                                remat=spec.remat, mesh=mesh)
    else:
        cfg = spec.config.replace(param_dtype=spec.param_dtype, dtype=spec.dtype, remat=spec.remat)

        def init():
            return nnx.split(Transformer(cfg, rngs=nnx.Rngs(spec.seed)), nnx.Param)[1]
        abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(spec.seed)))
        params = jax.jit(init, out_shardings=model_shardings(abstract, mesh))()
        model = nnx.merge(nnx.graphdef(abstract), params)
    if spec.lora_path:  # saved adapters on these weights, placed like them
        model = lora_io.load_adapter(model, spec.lora_path, mesh=mesh)
    elif spec.lora_rank:  # fresh adapters on these weights (the same with or without them), placed like them
        model = lora.attach(model, rank=spec.lora_rank, alpha=spec.lora_alpha, targets=spec.lora_targets,
                            seed=spec.seed, mesh=mesh, rslora=spec.lora_rslora)
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, params, jax.tree.map(lambda x: x.sharding, params)


def check_start_adapters(spec: ModelSpec) -> None:
    """The saved adapters ``spec.lora_path`` names (if any) can be loaded, and the spec's own
    adapter settings do not say otherwise."""
    if not spec.lora_path:
        return
    rank, alpha, targets, rslora = lora_io.adapter_settings(spec.lora_path)
    default = {f.name: f.default for f in dataclasses.fields(ModelSpec)}
    differ = [f"{name}={got!r} (the adapters': {want!r})" for name, got, want in (
        ("lora_rank", spec.lora_rank, rank), ("lora_alpha", spec.lora_alpha, alpha),
        ("lora_targets", tuple(spec.lora_targets), targets), ("lora_rslora", spec.lora_rslora, rslora))
        if got != default[name] and got != want]
    if differ:
        raise ValueError(f"lora_path={spec.lora_path!r} starts from saved adapters, but "
                         f"{', '.join(differ)}; leave those settings at their defaults or make them match")


def vocab_size(graphdef, params) -> int:
    return nnx.merge(graphdef, params).cfg.vocab_size
