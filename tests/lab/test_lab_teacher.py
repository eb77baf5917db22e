"""The lab's evaluation against a scripted model with known answers, and the teacher's smoke run
(data built, trained, saved, evaluated; a second run reuses it)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from opd_jax.data import load_examples
from opd_jax.lab import countdown as C
from opd_jax.lab import data as L
from opd_jax.lab import teacher
from opd_jax.lab import tokenizer as T
from opd_jax.lab.evaluate import evaluate
from opd_jax.models import KVCache, from_pretrained, load_tokenizer, tiny_config

BIG = 40.0


class Bigram(nnx.Module):
    """Next token = a fixed function of the current one (``EOS`` where unlisted), margin ``BIG``."""

    def __init__(self, successor: dict[int, int]):
        V = T.vocab_size()
        self.cfg = tiny_config("llama", vocab_size=V, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=2)
        table = np.full(V, T.EOS_ID)
        for a, b in successor.items():
            table[a] = b
        self.table = nnx.Param(jnp.asarray(np.eye(V, dtype=np.float32)[table] * BIG))

    def hidden(self, tokens, positions, *, mask=None, cache: KVCache | None = None):
        mask = jnp.ones(tokens.shape, jnp.bool_) if mask is None else mask
        if cache is not None:
            valid = jax.lax.dynamic_update_slice(cache.valid, mask, (jnp.int32(0), cache.index))
            cache = cache.replace(valid=valid, index=cache.index + tokens.shape[1])
        return jax.nn.one_hot(tokens, self.cfg.vocab_size, dtype=jnp.float32), cache

    def logits(self, h):
        return h @ self.table[...]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(T.save(tmp_path_factory.mktemp("tok")))


def test_evaluate_scores_a_scripted_model_exactly(tok, tmp_path):
    """The model always answers ``9*8=72``: right for 9 8 5 -> 72, wrong for 9 8 5 -> 17."""
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    script = ids(":9*8=72")  # every character distinct: a bigram table can spell it
    model = Bigram(dict(zip(script, script[1:])))
    path = str(tmp_path / "eval.jsonl")
    L.write_records(path, [L.record(C.Problem((9, 8, 5), 72), tok), L.record(C.Problem((9, 8, 5), 17), tok)])
    examples = load_examples(path, tokenizer=tok, max_prompt_len=32)
    graphdef, params = nnx.split(model, nnx.Param)
    r = evaluate(graphdef, params, examples, tok, k=4, max_new_tokens=16)
    assert r["greedy_pass@1"] == 0.5 and r["pass@1"] == 0.5 and r["pass@4"] == 0.5
    assert r["distinct_correct"] == 0.5 and r["finished"] == 1.0
    assert 0 <= r["entropy"] < 1e-6  # every draw near-certain
    with pytest.raises(ValueError, match="k must be"):
        evaluate(graphdef, params, examples, tok, k=0)


def test_teacher_smoke_builds_data_trains_saves_and_is_reused(tmp_path, capsys):
    workdir = str(tmp_path / "lab")
    teacher.main(["--workdir", workdir, "--setting", "smoke", "--k", "2"])
    result = json.load(open(os.path.join(workdir, "teacher", "eval.json")))
    for name in ("greedy_pass@1", "pass@1", "pass@2", "finished"):
        assert 0.0 <= result[name] <= 1.0
    assert result["problems"] == teacher.SETTINGS["smoke"].test
    metrics_path = os.path.join(workdir, "teacher", "metrics.jsonl")
    lines = open(metrics_path).read().splitlines()
    assert json.loads(lines[-1])["step"] == teacher.SETTINGS["smoke"].steps
    assert "held-out problems" in capsys.readouterr().out
    trainer, tok = teacher.train(workdir, teacher.SETTINGS["smoke"])  # cached: restored, no training
    assert open(metrics_path).read().splitlines() == lines
    # The exported checkpoint is the trained teacher, tokenizer included.
    hf = os.path.join(workdir, "teacher", "hf")
    loaded = from_pretrained(hf)
    ids = np.asarray([tok(L.prompt(C.Problem((3, 5, 9), 24)), add_special_tokens=False)["input_ids"]])
    pos = np.arange(ids.shape[1])[None]
    np.testing.assert_allclose(loaded(ids, pos)[0], nnx.merge(trainer.s_graph, trainer.state.params)(ids, pos)[0],
                               rtol=0, atol=0)
    assert load_tokenizer(hf).decode(ids[0].tolist()) == "3 5 9 -> 24:"
