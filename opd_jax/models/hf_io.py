"""Hugging Face checkpoints: read and write ``config.json`` + safetensors in the HF layout.

Loading validates the whole checkpoint (names, shapes, dtypes) from the safetensors headers
before reading any tensor data, builds the model abstractly with ``nnx.eval_shape`` and then
fills each parameter straight into its final sharding with ``jax.make_array_from_callback``;
the callback slices memory-mapped files, so a host reads only the shards it holds.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from safetensors.numpy import save_file

from opd_jax.models import lora, safetensors_io as st
from opd_jax.models.config import ModelConfig
from opd_jax.models.hf_layout import hf_tensor_specs
from opd_jax.models.transformer import Transformer
from opd_jax.sharding import LOGICAL_RULES, logical_to_mesh

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint does not match its configuration (extra, mis-shaped or mis-typed tensor)."""


class MissingTensorError(CheckpointError, KeyError):
    """A tensor the configuration needs is not in the checkpoint."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0])


def resolve_checkpoint_dir(path: str | os.PathLike, *, local_files_only: bool = True,
                           cache_dir: str | None = None) -> str:
    """A local directory, or an HF repo id looked up in the local HF cache (no download by default)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, local_files_only=local_files_only, cache_dir=cache_dir)
    except Exception as e:  # the hub raises several types; the message is what matters
        raise FileNotFoundError(f"{path!r} is neither a directory nor a repo id in the local HF cache "
                                f"(local_files_only={local_files_only}): {e}") from e


def read_hf_config(path: str | os.PathLike, *, local_files_only: bool = True,
                   cache_dir: str | None = None) -> dict:
    """The ``config.json`` of the checkpoint at ``path`` (a directory or a repo id in the local HF
    cache), as a dict: its sizes and token ids, read without loading any weight."""
    directory = resolve_checkpoint_dir(path, local_files_only=local_files_only, cache_dir=cache_dir)
    file = os.path.join(directory, "config.json")
    if not os.path.exists(file):
        raise FileNotFoundError(f"{directory} has no config.json; is it a model checkpoint?")
    with open(file) as f:
        return json.load(f)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def has_tokenizer(path: str | os.PathLike, *, local_files_only: bool = True, cache_dir: str | None = None) -> bool:
    """Whether the checkpoint at ``path`` carries tokenizer files."""
    try:
        directory = resolve_checkpoint_dir(path, local_files_only=local_files_only, cache_dir=cache_dir)
    except FileNotFoundError:
        return False
    return any(os.path.exists(os.path.join(directory, name)) for name in TOKENIZER_FILES)


def load_tokenizer(path: str | os.PathLike, *, local_files_only: bool = True, cache_dir: str | None = None):
    """The ``transformers.AutoTokenizer`` stored with a checkpoint, chat template included."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        resolve_checkpoint_dir(path, local_files_only=local_files_only, cache_dir=cache_dir))


def from_pretrained(path: str | os.PathLike, *, param_dtype: str = "float32", dtype: str | None = None,
                    remat: bool = False, mesh: Mesh | None = None, rules: Mapping = LOGICAL_RULES,
                    local_files_only: bool = True, cache_dir: str | None = None) -> Transformer:
    """Load an HF Llama / Qwen2 / Qwen3 checkpoint into a ``Transformer``.

    ``dtype`` (compute) defaults to ``param_dtype``. With ``mesh``, every parameter is placed
    directly into the sharding its logical axis names map to under ``rules``; without one, on
    the first local device. Raises ``ConfigError``/``CheckpointError`` (``ValueError``s) or
    ``MissingConfigField``/``MissingTensorError`` (also ``KeyError``s) naming the culprit.
    """
    directory = resolve_checkpoint_dir(path, local_files_only=local_files_only, cache_dir=cache_dir)
    with open(os.path.join(directory, "config.json")) as f:
        hf_config = json.load(f)
    cfg = ModelConfig.from_hf(hf_config, param_dtype=param_dtype, dtype=dtype or param_dtype, remat=remat)
    headers = _read_headers(directory)
    specs = hf_tensor_specs(cfg)
    _validate(cfg, specs, headers)

    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    logical = _by_name(nnx.get_partition_spec(abstract_state))
    sources = _sources_by_param(specs)
    maps: dict[str, np.memmap] = {}  # one mapping per file, dropped when loading ends

    def fill(key_path, leaf):
        name = _param_name(key_path)
        if mesh is None:
            sharding = SingleDeviceSharding(jax.local_devices()[0])
        else:
            sharding = NamedSharding(mesh, logical_to_mesh(tuple(logical[name]), rules))
        read = _reader(sources[name], headers, maps, leaf.shape, cfg.param_jnp_dtype)
        return jax.make_array_from_callback(leaf.shape, sharding, read)

    state = jax.tree_util.tree_map_with_path(fill, abstract_state)
    model = nnx.merge(graphdef, state)
    # Kept (as a hashable string) so save_pretrained can carry token ids etc. through.
    model.source_hf_config = json.dumps(hf_config, sort_keys=True)
    return model


def save_pretrained(model: Transformer, path: str | os.PathLike, *, tokenizer=None,
                    max_shard_size: int = 5 * 2**30) -> None:
    """Write ``config.json`` and safetensors (sharded with an index above ``max_shard_size`` bytes).

    Tensors are gathered to host one HF tensor at a time and written one shard at a time, so host
    memory peaks near one shard. Single-process only (every parameter must be fully addressable).
    Stale ``model*.safetensors`` files in ``path`` are removed first. Keys of the source
    ``config.json`` that the model does not define (token ids, ...) are carried over. A model
    with low-rank adapters is written with them folded into its weights (``lora.merge_into_base``).
    """
    model = lora.merge_into_base(model)  # adapters folded into their weights: a plain checkpoint
    cfg = model.cfg
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "model*.safetensors")) + [os.path.join(path, INDEX_FILE)]:
        if os.path.exists(stale):
            os.remove(stale)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(_hf_config_to_write(model), f, indent=2, sort_keys=True)

    specs = hf_tensor_specs(cfg)
    itemsize = cfg.param_jnp_dtype.itemsize
    shards: list[list] = [[]]
    size = 0
    for spec in specs:
        nbytes = math.prod(spec.hf_shape) * itemsize
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes

    params = _by_name(nnx.state(model, nnx.Param))
    weight_map = {}
    for i, shard_specs in enumerate(shards):
        fname = SINGLE_FILE if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for spec in shard_specs:
            value = params[spec.param]
            if not value.is_fully_addressable:
                raise ValueError(f"save_pretrained runs on one process; parameter {'.'.join(spec.param)} "
                                 "is not fully addressable here")
            if spec.layer is not None:
                value = value[spec.layer]
            tensors[spec.hf_name] = np.ascontiguousarray(spec.to_hf(np.asarray(jax.device_get(value))))
            weight_map[spec.hf_name] = fname
        save_file(tensors, os.path.join(path, fname), metadata={"format": "pt"})
    if len(shards) > 1:
        total = sum(math.prod(s.hf_shape) for s in specs) * itemsize
        with open(os.path.join(path, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


# ----------------------------------------------------------------------------- internals
# Keys of a source config that to_hf() supersedes or that describe the source's storage.
_SUPERSEDED_KEYS = {"rope_scaling", "rope_theta", "rope_parameters", "torch_dtype", "dtype",
                    "transformers_version", "layer_types", "max_window_layers", "sliding_window"}


def _hf_config_to_write(model: Transformer) -> dict:
    """``cfg.to_hf()`` plus the source checkpoint's other keys (token ids, ...) when there was one."""
    source = json.loads(getattr(model, "source_hf_config", "{}"))
    out = {k: v for k, v in source.items() if k not in _SUPERSEDED_KEYS}
    out.update(model.cfg.to_hf())
    return out


def _param_name(key_path) -> tuple[str, ...]:
    return tuple(k.key for k in key_path if isinstance(k, jax.tree_util.DictKey))


def _by_name(tree) -> dict:
    """Flatten an nnx State (or spec tree) to ``{("layers", "q"): leaf, ...}``."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    return {_param_name(path): leaf for path, leaf in flat[0]}


def _read_headers(directory: str) -> dict[str, st.TensorInfo]:
    """Every tensor's header entry, from the single file or the sharded set named by the index."""
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path} has no 'weight_map' object")
        files = sorted(set(weight_map.values()))
    elif os.path.exists(os.path.join(directory, SINGLE_FILE)):
        weight_map, files = None, [SINGLE_FILE]
    else:
        raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}")
    headers: dict[str, st.TensorInfo] = {}
    for fname in files:
        for name, info in st.read_header(os.path.join(directory, fname)).items():
            if name in headers:
                raise CheckpointError(f"tensor {name!r} appears in both {headers[name].path} and {fname}")
            headers[name] = info
    if weight_map is not None:
        for name, fname in weight_map.items():
            if name not in headers or os.path.basename(headers[name].path) != fname:
                raise MissingTensorError(f"index maps tensor {name!r} to {fname}, which does not hold it")
        unlisted = sorted(set(headers) - set(weight_map))
        if unlisted:
            raise CheckpointError(f"tensor(s) {unlisted[:5]} are in the shard files but not in {INDEX_FILE}")
    return headers


def _validate(cfg: ModelConfig, specs, headers: Mapping[str, st.TensorInfo]) -> None:
    """Check names, shapes and dtypes of the whole checkpoint before any data is read."""
    expected = {s.hf_name: s for s in specs}
    missing = [n for n in expected if n not in headers]
    if missing:
        raise MissingTensorError(f"checkpoint is missing {len(missing)} tensor(s) the {cfg.architecture} "
                                 f"config needs, e.g. {missing[:5]}")
    extra = sorted(n for n in headers if n not in expected)
    if extra:
        hint = " (config has tie_word_embeddings=True)" if "lm_head.weight" in extra else ""
        raise CheckpointError(f"checkpoint has {len(extra)} unexpected tensor(s){hint}: {extra[:5]}")
    for name, spec in expected.items():
        info = headers[name]
        if tuple(info.shape) != tuple(spec.hf_shape):
            raise CheckpointError(f"tensor {name!r} has shape {tuple(info.shape)}, config implies "
                                  f"{tuple(spec.hf_shape)}")
        if info.dtype not in st.FLOAT_DTYPES:
            raise CheckpointError(f"tensor {name!r} has dtype {info.dtype}; expected a floating type "
                                  f"{sorted(st.FLOAT_DTYPES)}")


def _sources_by_param(specs) -> dict[tuple[str, ...], list]:
    """Our parameter name -> its HF tensor specs, in layer order for stacked parameters."""
    out: dict[tuple[str, ...], list] = {}
    for spec in specs:
        out.setdefault(spec.param, []).append(spec)
    return out


def _reader(sources, headers, maps, shape, dtype):
    """A ``make_array_from_callback`` callback assembling one parameter's block from mmapped views."""
    stacked = sources[0].layer is not None

    def view(spec):
        return spec.to_ours(st.tensor_view(headers[spec.hf_name], maps))

    def read(index):
        index = tuple(index) + (slice(None),) * (len(shape) - len(tuple(index)))
        if stacked:
            block = np.stack([view(sources[layer])[index[1:]] for layer in range(len(sources))[index[0]]])
        else:
            block = view(sources[0])[index]
        return np.ascontiguousarray(block.astype(dtype))

    return read
