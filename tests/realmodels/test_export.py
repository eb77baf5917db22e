"""An exported student loads in ``transformers`` (PyTorch) and gives our logits, in float32 and
bfloat16; the directory is written whole or not at all and never clobbered by mistake."""

import json
import os

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from realmodels_helpers import cli_helpers, hf_reference
from safetensors.numpy import load_file

import opd_jax.export as X
from opd_jax import smoke
from opd_jax.export import export
from opd_jax.models import from_pretrained, tiny_config

VOCAB = 128


def _model(tied: bool, seed: int = 0):
    cfg = tiny_config("qwen3", vocab_size=VOCAB, tie_word_embeddings=tied)
    return hf_reference.random_model(cfg, seed=seed)


def _torch(path, dtype=torch.float32):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager", dtype=dtype).eval()


@pytest.mark.parametrize("tied", [False, True])
def test_float32_export_loads_in_transformers_with_our_logits(tmp_path, tied):
    model, tok = _model(tied), smoke.chat_tokenizer()
    path = export(model, str(tmp_path / "hf"), tokenizer=tok, eos_ids=smoke.eos_ids(tok))
    tokens, mask, positions = hf_reference.padded_batch(VOCAB, (7, 4), 7)
    ours = hf_reference.jax_logits(model, tokens, mask, positions)
    theirs = hf_reference.torch_logits(_torch(path), tokens, mask, positions)
    valid = mask.astype(bool)
    np.testing.assert_allclose(theirs[valid], ours[valid], atol=1e-4, rtol=0)
    gen = transformers.GenerationConfig.from_pretrained(path)
    assert gen.eos_token_id == list(smoke.eos_ids(tok))
    loaded_tok = transformers.AutoTokenizer.from_pretrained(path)
    chat = [{"role": "user", "content": "2+2?"}]
    assert loaded_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    back = from_pretrained(path)  # and back into opd_jax, bit for bit
    np.testing.assert_array_equal(hf_reference.jax_logits(back, tokens, mask, positions), ours)


def test_bfloat16_export_rounds_the_weights_once_and_matches_pytorch(tmp_path):
    """The bf16 file holds exactly bf16(our float32 weights): PyTorch reading it in float32 gives
    the logits of our model with those rounded weights within 1e-4. Computing in bf16 (8 bits of
    mantissa, rounding in different places), PyTorch and we agree within 4 bf16 ulps of the
    largest logit, and our bf16 logits are no further from the float32 ones than twice
    PyTorch's."""
    model = _model(False)
    f32 = export(model, str(tmp_path / "f32"))
    bf16 = export(model, str(tmp_path / "bf16"), dtype="bfloat16")
    a, b = (load_file(os.path.join(d, "model.safetensors")) for d in (f32, bf16))
    assert a.keys() == b.keys()
    for name in a:
        assert b[name].dtype == ml_dtypes.bfloat16, name
        np.testing.assert_array_equal(b[name], a[name].astype(ml_dtypes.bfloat16))
    assert json.load(open(os.path.join(bf16, "config.json")))["dtype"] == "bfloat16"
    tokens, mask, positions = hf_reference.padded_batch(VOCAB, (7, 4), 7)
    valid = mask.astype(bool)
    rounded = from_pretrained(bf16, param_dtype="float32")  # bf16 weights, float32 compute
    ours = hf_reference.jax_logits(rounded, tokens, mask, positions)
    theirs = hf_reference.torch_logits(_torch(bf16, torch.float32), tokens, mask, positions)
    np.testing.assert_allclose(theirs[valid], ours[valid], atol=1e-4, rtol=0)
    ours16 = hf_reference.jax_logits(from_pretrained(bf16, param_dtype="bfloat16"), tokens, mask,
                                     positions).astype(np.float32)
    theirs16 = hf_reference.torch_logits(_torch(bf16, torch.bfloat16), tokens, mask, positions)
    ulp = 2.0 ** (np.floor(np.log2(np.abs(ours[valid]).max())) - 7)
    assert np.abs(theirs16[valid] - ours16[valid]).max() < 4 * ulp
    err_ours, err_theirs = (np.abs(x[valid] - ours[valid]).max() for x in (ours16, theirs16))
    assert err_ours <= 2 * err_theirs


def test_an_existing_export_is_never_clobbered_by_mistake(tmp_path):
    path = str(tmp_path / "hf")
    export(_model(False, seed=0), path)
    before = cli_helpers.digest(path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export(_model(False, seed=1), path)
    assert cli_helpers.digest(path) == before
    export(_model(False, seed=1), path, overwrite=True)
    assert cli_helpers.digest(path) != before
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temporary or old copies left


def test_a_failed_export_leaves_nothing_half_written(tmp_path, monkeypatch):
    path = str(tmp_path / "hf")
    export(_model(False), path)
    before = cli_helpers.digest(path)

    def crash(model, where, **kw):
        os.makedirs(where)
        with open(os.path.join(where, "model.safetensors"), "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(X, "save_pretrained", crash)
    for target, overwrite in ((path, True), (str(tmp_path / "fresh"), False)):
        with pytest.raises(OSError, match="disk full"):
            export(_model(False, seed=1), target, overwrite=overwrite)
    assert cli_helpers.digest(path) == before  # the previous export, intact
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no fresh/, no temporaries


def test_source_generation_defaults_and_token_ids_are_carried_over(tmp_path):
    src = tmp_path / "src"
    export(_model(True), str(src))
    cfg = json.load(open(src / "config.json"))
    cfg.update(bos_token_id=5, pad_token_id=0)
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.6, "top_p": 0.95, "eos_token_id": 2}))
    model = nnx.merge(*nnx.split(_model(True)))  # a trained student has no record of its source
    out = export(model, str(tmp_path / "out"), source=str(src), eos_ids=(2, 0))
    gen = json.load(open(os.path.join(out, "generation_config.json")))
    assert gen["temperature"] == 0.6 and gen["top_p"] == 0.95 and gen["eos_token_id"] == [2, 0]
    written = json.load(open(os.path.join(out, "config.json")))
    assert written["bos_token_id"] == 5 and written["pad_token_id"] == 0
    with pytest.raises(ValueError, match="export dtype must be one of"):
        export(model, str(tmp_path / "x"), dtype="float16")
