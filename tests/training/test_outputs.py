"""What a run writes besides its checkpoints, through ``Trainer.run``: the held-out evaluation
(``eval.*``) and the Hugging Face exports of the student (``ckpt.export*``).

Oracles: each ``<workdir>/eval/<step>.json`` equals :func:`opd_jax.evaluate.evaluate` called by
hand with the documented protocol on that step's parameters; an export loads back to the
parameters it was written from, bit for bit; a run that evaluates and exports trains exactly as
one that does not; a finished run asked again writes only what is missing.
"""

import dataclasses
import json
import os

import numpy as np
from cli_helpers import assert_bitwise_equal, digest, metrics, reproducible
from flax import nnx
from test_loop import experiment

import opd_jax.objectives as O
from opd_jax.evaluate import evaluate
from opd_jax.models import from_pretrained
from opd_jax.training.config import CheckpointConfig, EvalConfig
from opd_jax.training.loop import Trainer

ANSWER_TOKEN = 5


def reward(example, completion) -> float:
    """Correct when the completion holds the record's answer token."""
    return float(int(example.answer) in completion.tolist())


def _exp(tmp_path, name, **kw):
    held_out = tmp_path / "held_out.jsonl"
    rng = np.random.default_rng(7)
    held_out.write_text("".join(json.dumps({"prompt_ids": rng.integers(2, 32, 3).tolist(),
                                            "answer": ANSWER_TOKEN + i % 2}) + "\n"
                                for i in range(6)))
    exp = experiment(tmp_path, O.OPDConfig(), steps=4, lr=1e-2, samples=2)
    run = dataclasses.replace(exp.run, workdir=str(tmp_path / name), diagnostics_k=4)
    return dataclasses.replace(exp, run=run, **kw), str(held_out)


def test_evaluation_and_export_during_a_run(tmp_path):
    plain, held_out = _exp(tmp_path, "plain", ckpt=CheckpointConfig(export=False))
    exp, _ = _exp(tmp_path, "run", ckpt=CheckpointConfig(export_every=2),
                  eval=EvalConfig(path=held_out, every=2, at_start=True, k=3, max_new_tokens=6,
                                  batch_size=4))
    initial = Trainer(exp, reward_fn=reward)
    start = initial.state.params
    trainer = Trainer(exp, reward_fn=reward)
    trainer.run()
    work = tmp_path / "run"

    # Evaluations before the first step, at step 2 and at the end, in the files and the metrics.
    assert sorted(os.listdir(work / "eval")) == ["0.json", "2.json", "4.json"]
    results = {s: json.loads((work / "eval" / f"{s}.json").read_text()) for s in (0, 2, 4)}
    rows = {r["step"]: r for r in metrics(work)}
    assert sorted(rows) == [0, 1, 2, 3, 4] and "loss/total" not in rows[0]
    for step, r in results.items():
        assert r["step"] == step and r["data"] == held_out and r["max_new_tokens"] == 6
        for name, value in r.items():
            if isinstance(value, float) and name != "temperature":  # a setting
                assert rows[step][f"eval/{name}"] == value, (step, name)
    assert not any(k.startswith("eval/") for k in rows[1])

    # Each equals the evaluation called by hand: the run's sampler with eval.max_new_tokens,
    # eval.k samples, key run.seed, and the diagnostics against the teacher at the loss
    # temperature with the top-run.diagnostics_k overlap.
    def by_hand(params):
        teacher = trainer.teacher.models(params)[0]
        return evaluate(trainer.s_graph, params, trainer.eval_examples, reward_fn=reward,
                        cfg=exp.sampler.replace(max_new_tokens=6), k=3, seed=exp.run.seed,
                        batch_size=4, mesh=trainer.mesh, teacher=teacher, temperature=1.0,
                        diagnostics_k=4, chunk_size=exp.step.chunk_size)
    for step, params in ((0, start), (4, trainer.state.params)):
        expected = by_hand(params)
        assert {k: results[step][k] for k in expected} == expected, step
    assert results[4]["reverse_kl"] > 0 and "overlap_ratio" in results[4]
    assert results[0] != results[4]  # the student changed

    # Exports at step 2 and at the end: the parameters they were written from, bit for bit.
    assert sorted(os.listdir(work / "hf")) == ["step_2", "step_4"]
    loaded = nnx.split(from_pretrained(str(work / "hf" / "step_4")), nnx.Param)[1]
    assert_bitwise_equal(loaded, trainer.state.params)

    # Training is the same as without evaluations and exports.
    other = Trainer(plain, reward_fn=reward)
    other.run()
    assert not (tmp_path / "plain" / "eval").exists() and not (tmp_path / "plain" / "hf").exists()
    assert_bitwise_equal(other.state.params, trainer.state.params)
    plain_rows = {r["step"]: reproducible(r) for r in metrics(tmp_path / "plain")}
    for step, row in plain_rows.items():
        assert {k: v for k, v in reproducible(rows[step]).items()
                if not k.startswith("eval/")} == row

    # A finished run asked again writes what is missing only, and nothing else changes.
    before = {"eval/2.json": (work / "eval" / "2.json").read_bytes(),
              "eval/4.json": (work / "eval" / "4.json").read_bytes()}
    checkpoints = digest(work / "checkpoints")
    (work / "eval" / "4.json").unlink()
    os.rename(work / "hf" / "step_4", tmp_path / "moved")
    again = Trainer(exp, reward_fn=reward)
    again.run()
    assert {k: (work / k).read_bytes() for k in before} == before
    assert sorted(os.listdir(work / "hf")) == ["step_2", "step_4"]
    assert digest(work / "hf" / "step_4").keys() == digest(tmp_path / "moved").keys()
    assert_bitwise_equal(nnx.split(from_pretrained(str(work / "hf" / "step_4")), nnx.Param)[1],
                         trainer.state.params)
    assert digest(work / "checkpoints") == checkpoints
    last = metrics(work)[-1]
    assert last["step"] == 4 and "loss/total" not in last and last["eval/pass@3"] == \
        results[4]["pass@3"]
