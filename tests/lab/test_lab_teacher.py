"""The lab's evaluation against a scripted model with known answers, and the teacher's smoke run
(data built, trained, saved, evaluated; a second run reuses it)."""

import json
import os

import numpy as np
import pytest
from flax import nnx
from scripted_model import Scripted

from opd_jax.data import load_examples
from opd_jax.lab import countdown as C
from opd_jax.lab import data as L
from opd_jax.lab import teacher
from opd_jax.lab import tokenizer as T
from opd_jax.lab.evaluate import evaluate
from opd_jax.models import from_pretrained, load_tokenizer

BIG = 40.0


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(T.save(tmp_path_factory.mktemp("tok")))


def test_evaluate_scores_a_scripted_model_exactly(tok, tmp_path):
    """The model always answers ``9*8=72``: right for 9 8 5 -> 72, wrong for 9 8 5 -> 17."""
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    script = ids(":9*8=72")  # every character distinct: a bigram table can spell it
    model = Scripted(T.vocab_size(), dict(zip(script, script[1:])), default=T.EOS_ID, big=BIG)
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
