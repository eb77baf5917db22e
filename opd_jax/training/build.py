"""Build the student and teacher of an experiment on a mesh: load a checkpoint or initialise."""

import jax
from flax import nnx

from opd_jax.models import Transformer, from_pretrained, lora
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
    if spec.lora_rank:  # fresh adapters on these weights (the same with or without them), placed like them
        model = lora.attach(model, rank=spec.lora_rank, alpha=spec.lora_alpha, targets=spec.lora_targets,
                            seed=spec.seed, mesh=mesh)
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, params, jax.tree.map(lambda x: x.sharding, params)


def vocab_size(graphdef, params) -> int:
    return nnx.merge(graphdef, params).cfg.vocab_size
