"""The real-model experiment files end to end through ``python -m opd_jax.main`` on tiny Qwen3
checkpoints with a chat-template tokenizer (nothing downloaded), then the path after training:
the trained student exported as an HF checkpoint, evaluated by ``python -m opd_jax.evaluate``
against its teacher, and plotted."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import transformers
from flax import nnx
from realmodels_helpers import cli_helpers as C

from opd_jax import plot, smoke
from opd_jax.export import export
from opd_jax.models import from_pretrained, load_tokenizer

pytestmark = pytest.mark.slow


def _pure(tree):
    """Orbax's ``{"value": array}`` leaves as arrays."""
    if isinstance(tree, dict):
        return tree["value"] if set(tree) == {"value"} else {k: _pure(v) for k, v in tree.items()}
    return tree


def test_qwen3_math_opd_smoke_trains_then_exports_evaluates_and_plots(tmp_path):
    work = tmp_path / "run"
    C.check_ok(C.run_cli(work, config="experiments/qwen3_math_opd.py:smoke"))
    cfg = json.loads((work / "config.json").read_text())
    student, teacher = work / "models" / "student", work / "models" / "teacher"
    assert cfg["student"]["path"] == str(student) and cfg["teacher"]["model"]["path"] == str(teacher)
    assert cfg["sampler"]["eos_ids"] == [2, 0]  # both ids of the checkpoint's generation config
    assert cfg["data"]["path"] == str(work / "data" / "train.jsonl") and cfg["data"]["chat_template"]
    records = [json.loads(line) for line in open(work / "data" / "train.jsonl")]
    assert "messages" in records[0] and "answer" in records[0]
    assert [m["step"] for m in C.metrics(work)] == [1, 2] and C.steps(work) == [2]

    # What the loop will do at the end of a run: the trained student as an HF checkpoint.
    tok = load_tokenizer(str(student))
    graphdef, params = nnx.split(from_pretrained(str(student)), nnx.Param)
    initial = C.leaves(params)
    nnx.replace_by_pure_dict(params, _pure(C.read_state(work, 2)["params"]))
    trained = C.leaves(params)
    assert initial.keys() == trained.keys()
    assert any(not np.array_equal(initial[k], trained[k]) for k in initial)  # it trained
    hf = export(graphdef, str(work / "hf" / "step_2"), params=params, tokenizer=tok,
                eos_ids=tuple(cfg["sampler"]["eos_ids"]), source=str(student))
    assert transformers.AutoConfig.from_pretrained(hf).model_type == "qwen3"

    out = work / "eval" / "2.json"
    proc = subprocess.run(
        [sys.executable, "-m", "opd_jax.evaluate", "--model", hf, "--teacher", str(teacher),
         "--data", str(work / "data" / "eval.jsonl"), "--k", "2", "--max-new-tokens", "16",
         "--max-prompt-len", "192", "--dtype", "float32", "--out", str(out)],
        cwd=C.REPO, text=True, capture_output=True, timeout=300, env=C.child_env(8))
    C.check_ok(proc)
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout)["pass@2"] == result["pass@2"]
    for name in ("greedy_pass@1", "pass@1", "pass@2", "truncated"):
        assert 0.0 <= result[name] <= 1.0, name
    assert result["problems"] == 8 and result["reverse_kl"] > 0 and 0 < result["mean_length"] <= 16

    assert plot.main([str(work)]) == 0
    assert sorted(os.listdir(work / "plots")) == ["eval_flops.png", "eval_step.png",
                                                  "training_flops.png", "training_step.png"]


def test_qwen3_opsd_smoke_with_the_student_from_the_local_hf_cache(tmp_path):
    """``student.path`` as a repo id, found in the local HF cache layout (no network); the
    teacher (the initial student) reads the records' privileged ``teacher_messages``."""
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
