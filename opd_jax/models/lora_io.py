"""Low-rank adapters in PEFT's file layout: what ``peft.PeftModel.from_pretrained`` and vLLM's
``--lora-modules`` read (``adapter_config.json`` and ``adapter_model.safetensors``).

PEFT keeps each adapted ``nn.Linear``'s factors as ``lora_A.weight [r, in]`` and ``lora_B.weight
[out, r]`` under the module's name and scales their product by ``lora_alpha / r`` (``lora_alpha /
sqrt(r)`` with ``use_rslora``, our ``lora_rslora``); ours are
``A [in..., r]`` and ``B [r, out...]`` stacked over layers (:mod:`opd_jax.models.lora`), with the
input and output axes flattened in the order the HF weights use (:mod:`opd_jax.models.hf_layout`).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from opd_jax.models import lora
from opd_jax.models.hf_layout import PROJECTIONS

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model.model.layers"


def _key(layer: int, name: str, factor: str) -> str:
    return f"{_PREFIX}.{layer}.{PROJECTIONS[name]}.lora_{factor}.weight"


def save_adapter(model, path: str | os.PathLike, *, base_model: str = "") -> None:
    """Write ``model``'s adapters (a ``Transformer`` with ``cfg.lora_rank > 0``) to the directory
    ``path`` in PEFT's layout, in float32; ``base_model`` is recorded as
    ``base_model_name_or_path`` (the checkpoint the adapters go on)."""
    cfg = model.cfg
    if not cfg.lora_rank:
        raise ValueError("the model has no adapters (lora_rank=0); nothing to save")
    tensors = {}
    for name in cfg.lora_targets:
        a_name, b_name = lora.factor_names(name)
        a = np.asarray(jax.device_get(getattr(model.layers, a_name)[...]))
        b = np.asarray(jax.device_get(getattr(model.layers, b_name)[...]))
        for layer in range(cfg.num_layers):
            tensors[_key(layer, name, "A")] = np.ascontiguousarray(a[layer].reshape(-1, cfg.lora_rank).T)
            tensors[_key(layer, name, "B")] = np.ascontiguousarray(b[layer].reshape(cfg.lora_rank, -1).T)
    tensors = {k: v.astype(np.float32) for k, v in tensors.items()}  # (an export may have cast them)
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, WEIGHTS_FILE))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.lora_rank,
              "lora_alpha": cfg.lora_alpha, "lora_dropout": 0.0, "bias": "none",
              "target_modules": sorted(PROJECTIONS[t].split(".")[-1] for t in cfg.lora_targets),
              "fan_in_fan_out": False, "use_rslora": cfg.lora_rslora, "use_dora": False, "inference_mode": True,
              "init_lora_weights": True, "modules_to_save": None, "base_model_name_or_path": base_model}
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def adapter_settings(path: str | os.PathLike) -> tuple[int, float, tuple[str, ...], bool]:
    """``(rank, alpha, targets, rslora)`` of the PEFT adapters at ``path`` (read from its config alone);
    a clear error for a directory without one, or adapters :func:`load_adapter` cannot load."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file) or not os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
        raise FileNotFoundError(f"{path}: no PEFT adapter here (it needs {CONFIG_FILE} and {WEIGHTS_FILE}, "
                                "as save_adapter, an export's adapter/ or PEFT's save_pretrained write them)")
    with open(file) as f:
        config = json.load(f)
    unsupported = {k: config.get(k) for k in ("use_dora", "fan_in_fan_out") if config.get(k)}
    if config.get("peft_type") != "LORA" or unsupported or config.get("bias", "none") != "none":
        raise ValueError(f"{path}: only plain LoRA adapters (or rsLoRA) load here (peft_type LORA, bias "
                         f"none, no DoRA/fan_in_fan_out); got peft_type={config.get('peft_type')!r} "
                         f"bias={config.get('bias')!r} {unsupported or ''}")
    by_module = {v.split(".")[-1]: k for k, v in PROJECTIONS.items()}
    modules = config["target_modules"]
    modules = [modules] if isinstance(modules, str) else modules
    unknown = [m for m in modules if m not in by_module]
    if unknown:
        raise ValueError(f"{path}: target_modules {unknown} are not among {sorted(by_module)}")
    targets = tuple(t for t in lora.TARGETS if PROJECTIONS[t].split(".")[-1] in modules)
    return int(config["r"]), float(config["lora_alpha"]), targets, bool(config.get("use_rslora", False))


def load_adapter(model, path: str | os.PathLike, *, mesh=None):
    """``model`` (a ``Transformer`` without adapters) with the PEFT adapters at ``path`` attached:
    the inverse of :func:`save_adapter` (only what it writes: plain LoRA on these projections)."""
    rank, alpha, targets, rslora = adapter_settings(path)
    out = lora.attach(model, rank=rank, alpha=alpha, targets=targets, mesh=mesh, rslora=rslora)
    tensors = load_file(os.path.join(path, WEIGHTS_FILE))
    cfg = out.cfg
    for name in targets:
        for factor, attr in zip("AB", lora.factor_names(name)):
            var = getattr(out.layers, attr)
            shape = var[...].shape[1:]
            rows = []
            for layer in range(cfg.num_layers):
                key = _key(layer, name, factor)
                if key not in tensors:
                    raise ValueError(f"{path}: {WEIGHTS_FILE} has no tensor {key!r}")
                w = tensors[key].T  # A: [in, r], B: [r, out]
                if w.size != int(np.prod(shape)):
                    raise ValueError(f"{path}: {key} has shape {tensors[key].shape}, which does not fit "
                                     f"this model's {attr} {shape}")
                rows.append(w.reshape(shape))
            value = jnp.asarray(np.stack(rows), lora.FACTOR_DTYPE)
            var.set_value(jax.device_put(value, var[...].sharding))
    return out
