"""Write a model as a Hugging Face checkpoint that ``transformers`` and vLLM load: ``config.json``,
safetensors, ``generation_config.json`` and the tokenizer, in float32 or bfloat16. A model with
low-rank adapters is written with them folded into its weights, and the adapters alone go to
``adapter/`` in PEFT's layout (``vllm serve BASE --enable-lora --lora-modules student=PATH/adapter``).

The directory is written whole or not at all: everything goes to a temporary sibling
directory, which is renamed into place only once complete. An existing export is refused
unless ``overwrite=True``; then it is replaced by renames, so at every moment either the old or
the new checkpoint is complete on disk (a crash leaves at most a ``*.tmp-*`` / ``*.old-*``
sibling, never a half-written ``path``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from opd_jax.models import Transformer, save_pretrained
from opd_jax.models.hf_io import read_hf_config, resolve_checkpoint_dir
from opd_jax.models.lora_io import save_adapter

DTYPES = ("float32", "bfloat16")
ADAPTER_DIR = "adapter"  # a student with low-rank adapters: them alone, in PEFT's layout


def _as_model(model, params, dtype: str | None) -> Transformer:
    """The model to write: ``model`` (or ``nnx.merge(model, params)``), cast to ``dtype``."""
    if params is not None:  # host arrays (a restored checkpoint) are placed on the device
        model = nnx.merge(model, jax.tree.map(
            lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), params))
    if not isinstance(model, Transformer):
        raise TypeError(f"export writes an opd_jax Transformer (or its graphdef and params), got "
                        f"{type(model).__name__}")
    if dtype is None or dtype == model.cfg.param_dtype:
        return model
    cfg = model.cfg.replace(param_dtype=dtype, dtype=dtype)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    state = jax.tree.map(lambda x: jnp.asarray(x, cfg.param_jnp_dtype), nnx.state(model, nnx.Param))
    out = nnx.merge(graphdef, state)
    source = getattr(model, "source_hf_config", None)
    if source is not None:
        out.source_hf_config = source
    return out


def _generation_config(source: str | None, eos_ids: Sequence[int], model: Transformer) -> dict:
    """The source checkpoint's ``generation_config.json`` (its sampling defaults) if there is one,
    with ``eos_token_id`` set to ``eos_ids`` when given."""
    out = {}
    if source:
        path = os.path.join(resolve_checkpoint_dir(source), "generation_config.json")
        if os.path.exists(path):
            with open(path) as f:
                out = json.load(f)
    if eos_ids:
        out["eos_token_id"] = [int(i) for i in eos_ids] if len(eos_ids) > 1 else int(eos_ids[0])
    hf = json.loads(getattr(model, "source_hf_config", "{}"))
    for key in ("bos_token_id", "pad_token_id"):
        if key not in out and hf.get(key) is not None:
            out[key] = hf[key]
    return out


def export(model, path: str, *, params=None, tokenizer=None, eos_ids: Sequence[int] = (),
           source: str | None = None, dtype: str | None = None, overwrite: bool = False,
           max_shard_size: int = 5 * 2**30) -> str:
    """Write ``model`` (an nnx ``Transformer``, or its graphdef with ``params``) to ``path``.

    Args:
      tokenizer: saved alongside (what a reader of the checkpoint tokenizes with).
      eos_ids: the end-of-sequence ids for ``generation_config.json`` (all of them).
      source: the checkpoint the model came from (a directory or repo id in the local HF cache):
        its ``generation_config.json`` (sampling defaults) and ``config.json`` keys the model does
        not define (token ids) are carried over.
      dtype: ``"float32"`` or ``"bfloat16"`` (None: the model's parameter dtype).
      overwrite: replace an existing checkpoint at ``path`` (else it is an error).
    Returns ``path``. Every parameter must be addressable by this process: in a multi-host run,
    gather them first (:func:`gather`, on every process) and export on one.
    """
    path = os.path.abspath(os.fspath(path))
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"export dtype must be one of {DTYPES}, got {dtype!r}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; export(..., overwrite=True) replaces it")
    tree = params if params is not None else (
        nnx.state(model, nnx.Param) if isinstance(model, nnx.Module) else {})
    if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(tree)):
        raise ValueError("export writes from one process, but some parameters live on other "
                         "hosts; gather them first: params = opd_jax.export.gather(params) on "
                         "every process, then export on one")
    model = _as_model(model, params, dtype)
    if source and not getattr(model, "source_hf_config", None):
        model.source_hf_config = json.dumps(read_hf_config(source), sort_keys=True)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_pretrained(model, tmp, tokenizer=tokenizer, max_shard_size=max_shard_size)
        if model.cfg.lora_rank:  # the adapters alone too, for serving beside the base model
            save_adapter(model, os.path.join(tmp, ADAPTER_DIR), base_model=source or "")
        gen = _generation_config(source, eos_ids, model)
        if gen:
            with open(os.path.join(tmp, "generation_config.json"), "w") as f:
                json.dump(gen, f, indent=2, sort_keys=True)
        _replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def gather(params):
    """``params`` with every array that spans several hosts gathered whole onto this one (as a
    NumPy array). A collective: every process of a multi-host run must call it."""
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return x
    return jax.tree.map(one, params)


def _replace(tmp: str, path: str) -> None:
    """Move the complete directory ``tmp`` to ``path``, replacing what is there by renames."""
    if not os.path.exists(path):
        os.rename(tmp, path)
        return
    old = f"{path}.old-{os.getpid()}"
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError:
        os.rename(old, path)  # put the previous export back
        raise
    shutil.rmtree(old, ignore_errors=True)
