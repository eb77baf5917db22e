"""The real-model experiment files end to end through ``python -m opd_jax.main`` on tiny Qwen3
checkpoints with a chat-template tokenizer (nothing downloaded): the run itself evaluates the
student on held-out problems and exports it as a Hugging Face checkpoint. Oracles: PyTorch
(``transformers``) reading the run's export gives the logits of the student in the run's Orbax
checkpoint; the standalone ``python -m opd_jax.evaluate`` of that export gives the run's own
evaluation; a bfloat16 export holds exactly the rounded weights of the checkpoint."""

import json
import os

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from realmodels_helpers import cli_helpers as C
from realmodels_helpers import hf_reference

from opd_jax import plot, smoke
from opd_jax.evaluate import __main__ as evaluate_cli
from opd_jax.models import from_pretrained

pytestmark = pytest.mark.slow
EVAL_SETTINGS = ("step", "data", "max_new_tokens", "temperature")


def _pure(tree):
    """Orbax's ``{"value": array}`` leaves as arrays."""
    if isinstance(tree, dict):
        return tree["value"] if set(tree) == {"value"} else {k: _pure(v) for k, v in tree.items()}
    return tree


def _checkpointed(model_dir, work, step):
    """``(graphdef, params)`` of the student in the run's Orbax checkpoint of ``step``, and the
    parameters it started from (those of ``model_dir``)."""
    graphdef, params = nnx.split(from_pretrained(str(model_dir)), nnx.Param)
    initial = C.leaves(params)
    nnx.replace_by_pure_dict(params, _pure(C.read_state(work, step)["params"]))
    return graphdef, params, initial


def _results(work):
    return {int(p[:-5]): json.loads((work / "eval" / p).read_text())
            for p in os.listdir(work / "eval")}


def test_qwen3_math_opd_smoke_evaluates_and_exports_through_the_command_line(tmp_path, capsys):
    work = tmp_path / "run"
    C.check_ok(C.run_cli(work, config="experiments/qwen3_math_opd.py:smoke"))
    cfg = json.loads((work / "config.json").read_text())
    student, teacher = work / "models" / "student", work / "models" / "teacher"
    held_out = work / "data" / "eval.jsonl"
    assert cfg["student"]["path"] == str(student) and cfg["teacher"]["model"]["path"] == str(teacher)
    assert cfg["sampler"]["eos_ids"] == [2, 0]  # both ids of the checkpoint's generation config
    assert cfg["data"]["path"] == str(work / "data" / "train.jsonl") and cfg["data"]["chat_template"]
    assert cfg["reward"] == "math" and cfg["eval"]["path"] == str(held_out)
    records = [json.loads(line) for line in open(work / "data" / "train.jsonl")]
    assert "messages" in records[0] and "answer" in records[0]
    rows = C.metrics(work)
    assert [m["step"] for m in rows] == [0, 1, 2] and C.steps(work) == [2]

    # The run's evaluations: before the first step and after each, in the files and the metrics.
    results = _results(work)
    assert sorted(results) == [0, 1, 2]
    for row in rows:
        r = results[row["step"]]
        assert r["step"] == row["step"] and r["problems"] == 8 and r["k"] == 2
        for name in ("greedy_pass@1", "pass@1", "pass@2", "mean_length", "truncated",
                     "reverse_kl", "overlap_ratio", "entropy_gap"):
            assert row[f"eval/{name}"] == r[name], name
        assert r["reverse_kl"] > 0 and 0 < r["mean_length"] <= 16

    # The run's export at its end: PyTorch reads it and computes the checkpoint's logits.
    assert os.listdir(work / "hf") == ["step_2"]
    hf = str(work / "hf" / "step_2")
    graphdef, params, initial = _checkpointed(student, work, 2)
    assert any(not np.array_equal(initial[k], v) for k, v in C.leaves(params).items())  # trained
    tokens, mask, positions = hf_reference.padded_batch(smoke.student_config().vocab_size,
                                                        (9, 5), 9)
    ours = hf_reference.jax_logits(nnx.merge(graphdef, params), tokens, mask, positions)
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(
        hf, attn_implementation="eager", dtype=torch.float32).eval()
    theirs = hf_reference.torch_logits(torch_model, tokens, mask, positions)
    np.testing.assert_allclose(theirs[mask], ours[mask], atol=1e-4, rtol=0)
    assert transformers.GenerationConfig.from_pretrained(hf).eos_token_id == [2, 0]
    assert transformers.AutoTokenizer.from_pretrained(hf).chat_template

    # The standalone evaluation of the export, with the run's settings, is the run's last one.
    out = tmp_path / "standalone.json"
    assert evaluate_cli.main(
        ["--model", hf, "--teacher", str(teacher), "--data", str(held_out), "--k", "2",
         "--max-new-tokens", "16", "--max-prompt-len", "192", "--dtype", "float32",
         "--diagnostics-k", "4", "--batch-size", "8", "--seed", "0", "--out", str(out)]) == 0
    standalone = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out)["pass@2"] == standalone["pass@2"]
    run = {k: v for k, v in results[2].items() if k not in EVAL_SETTINGS}
    assert run.keys() <= standalone.keys()
    for name, value in run.items():
        assert standalone[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name

    assert plot.main([str(work)]) == 0  # the evaluation at step 0 precedes the FLOPs records
    assert sorted(os.listdir(work / "plots")) == ["eval_flops.png", "eval_step.png",
                                                  "training_flops.png", "training_step.png"]


def test_qwen3_opsd_smoke_with_the_student_from_the_local_hf_cache(tmp_path):
    """``student.path`` as a repo id, found in the local HF cache layout (no network); the
    teacher (the initial student) reads the records' privileged ``teacher_messages``; the run
    exports after every step, in bfloat16."""
    snapshot = tmp_path / "hub" / "models--acme--tiny-qwen3" / "snapshots" / "0123abcd"
    smoke.write_checkpoint(str(snapshot), smoke.student_config())
    (tmp_path / "hub" / "models--acme--tiny-qwen3" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-qwen3" / "refs" / "main").write_text("0123abcd")
    work = tmp_path / "run"
    C.check_ok(C.run_cli(work, "student.path=acme/tiny-qwen3",
                         config="experiments/qwen3_opsd.py:smoke",
                         env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}))
    cfg = json.loads((work / "config.json").read_text())
    assert cfg["student"]["path"] == "acme/tiny-qwen3" and cfg["teacher"]["kind"] == "initial"
    assert cfg["sampler"]["eos_ids"] == [2, 0] and cfg["objective"]["_type"] == "OPSDConfig"
    assert not (work / "models").exists()  # the cached checkpoint was used, none written
    assert "teacher_messages" in json.loads(open(work / "data" / "train.jsonl").readline())
    rows = C.metrics(work)
    assert [m["step"] for m in rows] == [1, 2] and all(np.isfinite(m["loss/total"]) for m in rows)

    results = _results(work)
    assert sorted(results) == [1, 2]
    for row in rows:
        assert row["eval/pass@2"] == results[row["step"]]["pass@2"]
        assert results[row["step"]]["reverse_kl"] > 0  # the teacher reads the worked solution

    assert sorted(os.listdir(work / "hf")) == ["step_1", "step_2"]
    hf = work / "hf" / "step_2"
    assert json.loads((hf / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((hf / "generation_config.json").read_text())["eos_token_id"] == [2, 0]
    _, params, _ = _checkpointed(snapshot, work, 2)
    exported = C.leaves(nnx.split(from_pretrained(str(hf), param_dtype="float32"), nnx.Param)[1])
    expected = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32)
                for k, v in C.leaves(params).items()}
    assert exported.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_qwen3_multiturn_opd_smoke_trains_on_two_turn_episodes(tmp_path):
    """The multi-turn experiment through the command line: the follow-up rendered by the chat
    template joins each episode whose first turn ended with an end-of-turn token."""
    from opd_jax.config import load_module
    work = tmp_path / "run"
    C.check_ok(C.run_cli(work, config="experiments/qwen3_multiturn_opd.py:smoke"))
    cfg = json.loads((work / "config.json").read_text())
    assert cfg["loop"]["turns"] == 2 and cfg["data"]["chat_template"]
    follow_up = load_module("experiments/qwen3_multiturn_opd.py").FOLLOW_UP
    for name in ("train", "eval"):
        records = [json.loads(line) for line in open(work / "data" / f"{name}.jsonl")]
        assert all(r["env_turns"] == [follow_up] for r in records)
    assert cfg["eval"]["turns"] == 2
    assert all(1.0 <= r["turns"] <= 2.0 for r in _results(work).values())  # evaluated as episodes
    rows = [m for m in C.metrics(work) if "sample/turns" in m]
    assert [m["step"] for m in rows] == [1, 2] and C.steps(work) == [2]
    assert all(1.0 < m["sample/turns"] <= 2.0 for m in rows)  # some episodes took the second turn
    # each turn's share of the loss tokens and its reverse KL to the teacher are logged
    assert all(m["turns/1/token_share"] + m["turns/2/token_share"] == pytest.approx(1.0) for m in rows)
    assert all(m["turns/2/token_share"] > 0 and np.isfinite(m["turns/2/reverse_kl"]) for m in rows)
    assert os.listdir(work / "hf") == ["step_2"]


def test_qwen3_draft_opd_smoke_trains_a_drafter_on_speculative_rollouts(tmp_path):
    """The drafter experiment through the command line: every step samples by speculative
    decoding with the teacher verifying, and logs the acceptance and the error positions' share."""
    work = tmp_path / "run"
    C.check_ok(C.run_cli(work, config="experiments/qwen3_draft_opd.py:smoke"))
    cfg = json.loads((work / "config.json").read_text())
    assert cfg["loop"]["draft_tokens"] == 4 and cfg["objective"]["error_weight"] == 1.0
    rows = [m for m in C.metrics(work) if "sample/acceptance_length" in m]
    assert [m["step"] for m in rows] == [1, 2] and C.steps(work) == [2]
    for m in rows:
        assert 1.0 <= m["sample/acceptance_length"] <= 5.0 and 0.0 <= m["sample/acceptance_rate"] <= 1.0
        assert 0.0 <= m["draft_opd/error_frac"] < 1.0 and np.isfinite(m["loss/total"])
    results = _results(work)
    assert sorted(results) == [0, 2]
    for r in results.values():  # the held-out evaluation measures the drafter too
        assert 1.0 <= r["acceptance_length"] <= 5.0 and 0.0 <= r["acceptance_rate"] <= 1.0


def test_qwen3_multiturn_retry_smoke_asks_again_after_wrong_answers(tmp_path, capsys):
    """The retry preset through the command line: single-turn records, the retry environment's
    message rendered by the chat template after every answer math-verify finds wrong (the tiny
    random student's answers are mostly wrong: episodes go on)."""
    work = tmp_path / "run"
    C.check_ok(C.run_cli(work, config="experiments/qwen3_multiturn_opd.py:retry_smoke"))
    cfg = json.loads((work / "config.json").read_text())
    assert cfg["environment"] == "retry" and cfg["loop"]["turns"] == 3 and cfg["eval"]["turns"] == 3
    records = [json.loads(line) for line in open(work / "data" / "train.jsonl")]
    assert not any("env_turns" in r for r in records)
    rows = [m for m in C.metrics(work) if "sample/turns" in m]
    assert [m["step"] for m in rows] == [1, 2] and all(1.0 < m["sample/turns"] <= 3.0 for m in rows)
    results = _results(work)
    assert all(1.0 < r["turns"] <= 3.0 for r in results.values())
    # the standalone evaluation of the export, as episodes with the same environment, is the run's last
    out = tmp_path / "standalone.json"
    assert evaluate_cli.main(
        ["--model", str(work / "hf" / "step_2"), "--data", str(work / "data" / "eval.jsonl"), "--k", "2",
         "--max-new-tokens", "16", "--max-prompt-len", "192", "--dtype", "float32", "--batch-size", "8",
         "--seed", "0", "--turns", "3", "--environment", "retry", "--out", str(out)]) == 0
    capsys.readouterr()
    standalone = json.loads(out.read_text())
    assert standalone["environment"] == "retry"
    for name in ("greedy_pass@1", "pass@1", "pass@2", "mean_length", "truncated", "entropy", "turns"):
        assert standalone[name] == pytest.approx(results[2][name], rel=1e-5, abs=1e-6), name


def test_qwen3_multiturn_tools_smoke_runs_with_the_calculator_and_its_system_prompt(tmp_path):
    """The tools preset through the command line: the calculator environment and the system
    prompt that describes it reach the run (the tiny random student writes no tool call, so its
    episodes end after one turn)."""
    from opd_jax.config import load_module
    work = tmp_path / "run"
    C.check_ok(C.run_cli(work, config="experiments/qwen3_multiturn_opd.py:tools_smoke"))
    cfg = json.loads((work / "config.json").read_text())
    system = load_module("experiments/qwen3_multiturn_opd.py").TOOLS_SYSTEM
    assert cfg["environment"] == "calculator" and cfg["data"]["system_prompt"] == system
    rows = [m for m in C.metrics(work) if "sample/turns" in m]
    assert [m["step"] for m in rows] == [1, 2] and all(m["sample/turns"] >= 1.0 for m in rows)
    assert all(r["turns"] >= 1.0 and "turn1_pass@1" in r for r in _results(work).values())
