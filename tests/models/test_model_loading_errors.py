"""Bad checkpoints fail with an error naming the tensor or field, before any parameter is placed."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hf_reference import random_model
from opd_jax.models import CheckpointError, from_pretrained, save_pretrained, tiny_config
from opd_jax.models.config import ConfigError, MissingConfigField
from opd_jax.models.hf_io import MissingTensorError

K_PROJ = "model.layers.1.self_attn.k_proj.weight"


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("good")
    save_pretrained(random_model(tiny_config("qwen3")), path)
    return path


@pytest.fixture
def checkpoint(good_checkpoint, tmp_path, monkeypatch):
    """A fresh copy to corrupt; placing any parameter fails the test (nothing may be half-loaded)."""
    for name in os.listdir(good_checkpoint):
        (tmp_path / name).write_bytes((good_checkpoint / name).read_bytes())

    def no_placement(*args, **kwargs):
        raise AssertionError("a parameter was placed before the checkpoint was validated")

    monkeypatch.setattr(jax, "make_array_from_callback", no_placement)
    return tmp_path


def _edit_tensors(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def _edit_config(path, edit):
    with open(path / "config.json") as f:
        cfg = json.load(f)
    edit(cfg)
    with open(path / "config.json", "w") as f:
        json.dump(cfg, f)


def test_good_checkpoint_loads(good_checkpoint):
    assert from_pretrained(good_checkpoint).cfg == tiny_config("qwen3")


def test_unknown_architecture(checkpoint):
    _edit_config(checkpoint, lambda c: c.update(model_type="gpt_neox"))
    with pytest.raises(ConfigError, match="gpt_neox"):
        from_pretrained(checkpoint)


def test_config_missing_field(checkpoint):
    _edit_config(checkpoint, lambda c: c.pop("intermediate_size"))
    with pytest.raises(MissingConfigField, match="intermediate_size"):
        from_pretrained(checkpoint)


def test_missing_tensor(checkpoint):
    _edit_tensors(checkpoint, lambda t: t.pop(K_PROJ))
    with pytest.raises(MissingTensorError, match=K_PROJ) as info:
        from_pretrained(checkpoint)
    assert isinstance(info.value, KeyError)


def test_extra_tensor(checkpoint):
    _edit_tensors(checkpoint, lambda t: t.update({"model.layers.0.self_attn.rotary.inv_freq": np.ones(8, np.float32)}))
    with pytest.raises(CheckpointError, match="rotary.inv_freq"):
        from_pretrained(checkpoint)


def test_lm_head_in_a_tied_checkpoint_is_extra(checkpoint):
    _edit_config(checkpoint, lambda c: c.update(tie_word_embeddings=True))
    with pytest.raises(CheckpointError, match="lm_head.weight.*|tie_word_embeddings"):
        from_pretrained(checkpoint)


def test_misshaped_tensor(checkpoint):
    _edit_tensors(checkpoint, lambda t: t.update({K_PROJ: t[K_PROJ][:-1]}))
    with pytest.raises(CheckpointError, match=rf"{K_PROJ}.*\(31, 48\).*\(32, 48\)"):
        from_pretrained(checkpoint)


def test_non_float_dtype(checkpoint):
    _edit_tensors(checkpoint, lambda t: t.update({K_PROJ: t[K_PROJ].astype(np.int32)}))
    with pytest.raises(CheckpointError, match=rf"{K_PROJ}.*I32"):
        from_pretrained(checkpoint)


def test_index_naming_a_tensor_its_file_lacks(checkpoint):
    names = load_file(checkpoint / "model.safetensors")
    weight_map = {name: "model-00002-of-00002.safetensors" for name in names}
    weight_map["model.norm.weight"] = "model-00001-of-00002.safetensors"
    with open(checkpoint / "model.safetensors.index.json", "w") as f:
        json.dump({"weight_map": weight_map}, f)
    os.rename(checkpoint / "model.safetensors", checkpoint / "model-00002-of-00002.safetensors")
    save_file({"unrelated": np.ones(1, np.float32)}, checkpoint / "model-00001-of-00002.safetensors")
    with pytest.raises(MissingTensorError, match="model.norm.weight.*00001"):
        from_pretrained(checkpoint)


def test_no_weights_and_unknown_repo(checkpoint, tmp_path_factory):
    os.remove(checkpoint / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_pretrained(checkpoint)
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-model"):
        from_pretrained("no-such-org/no-such-model", cache_dir=str(tmp_path_factory.mktemp("empty_cache")))
