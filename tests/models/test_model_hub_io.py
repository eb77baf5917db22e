"""Loading from the HF cache layout, tokenizers with chat templates, and sharded placement."""

import os

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hf_reference import jax_logits, padded_batch, random_model
from opd_jax.models import from_pretrained, load_tokenizer, save_pretrained, tiny_config
from opd_jax.sharding import logical_to_mesh, make_mesh

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokenizer():
    words = ["<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "hello", "there"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>"], chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    model = random_model(tiny_config("llama", vocab_size=128))
    save_pretrained(model, path, tokenizer=_tokenizer())
    return path, model


def test_tokenizer_round_trip_keeps_chat_template(checkpoint):
    path, _ = checkpoint
    messages = [{"role": "user", "content": "hello there"}]
    expected = _tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    loaded = load_tokenizer(path)
    assert loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    assert loaded.eos_token == "<|im_end|>"
    assert loaded("hello there")["input_ids"] == _tokenizer()("hello there")["input_ids"]


def test_repo_id_resolves_through_local_hf_cache(checkpoint, tmp_path):
    """The hub cache layout: models--org--name/{refs/main, snapshots/<commit>/...}; no network."""
    path, model = checkpoint
    repo = tmp_path / "models--acme--tiny-llama"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    for name in os.listdir(path):
        (snapshot / name).write_bytes((path / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")

    loaded = from_pretrained("acme/tiny-llama", cache_dir=str(tmp_path))
    tokens, mask, positions = padded_batch(128, (6, 3), 6)
    np.testing.assert_array_equal(jax_logits(loaded, tokens, mask, positions),
                                  jax_logits(model, tokens, mask, positions))
    assert load_tokenizer("acme/tiny-llama", cache_dir=str(tmp_path)).chat_template == CHAT_TEMPLATE


def test_load_onto_mesh_places_each_parameter_by_logical_names(checkpoint, n_devices):
    path, model = checkpoint
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sharded = from_pretrained(path, mesh=mesh)
    specs = nnx.get_partition_spec(nnx.state(sharded, nnx.Param))
    for array, spec, ref in zip(jax.tree.leaves(nnx.state(sharded, nnx.Param)), jax.tree.leaves(
            specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
            jax.tree.leaves(nnx.state(model, nnx.Param))):
        assert array.sharding == NamedSharding(mesh, logical_to_mesh(tuple(spec)))
        np.testing.assert_array_equal(array, ref)
    assert sharded.embed[...].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert len(sharded.embed[...].addressable_shards) == n_devices
