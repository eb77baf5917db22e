"""A student with low-rank adapters end to end through ``python -m opd_jax.main`` on the tiny
Qwen3 checkpoints of ``qwen3_math_opd.py:smoke``: the checkpoints hold the trained adapters
alone and the other weights stay the loaded ones; the export folds them in and writes them beside in PEFT's
layout; ``python -m opd_jax.evaluate`` of the base checkpoint with ``--adapter`` and of the
merged export both give the run's own last evaluation."""

import json

import numpy as np
import pytest
from realmodels_helpers import cli_helpers as C

from opd_jax.evaluate import __main__ as evaluate_cli
from opd_jax.models import from_pretrained, lora

pytestmark = pytest.mark.slow
SETS = ("student.lora_rank=4", "student.lora_alpha=8", "student.lora_targets=q,k,v,o,up", "optim.lr=3e-2")
EVAL_ARGS = ["--k", "2", "--max-new-tokens", "16", "--max-prompt-len", "192", "--dtype", "float32",
             "--diagnostics-k", "4", "--batch-size", "8", "--seed", "0"]


def test_qwen3_math_opd_smoke_with_adapters(tmp_path, capsys):
    work = tmp_path / "run"
    C.check_ok(C.run_cli(work, *SETS, config="experiments/qwen3_math_opd.py:smoke"))
    student, teacher = work / "models" / "student", work / "models" / "teacher"
    params = C.read_state(work, 2)["params"]
    value = lambda x: x["value"] if isinstance(x, dict) else x  # noqa: E731
    # the checkpoint holds the targets' adapters alone (the frozen weights are the student's files)
    assert list(params) == ["layers"] and sorted(params["layers"]) == sorted(
        n for t in ("q", "k", "v", "o", "up") for n in lora.factor_names(t))
    assert np.any(value(params["layers"]["lora_b_q"]) != 0)  # trained

    hf = work / "hf" / "step_2"
    loaded, exported = from_pretrained(str(student)).layers, from_pretrained(str(hf)).layers
    for name in ("down", "mlp_norm"):  # frozen and not adapted: the loaded weights, bit for bit
        np.testing.assert_array_equal(np.asarray(exported.__dict__[name][...]), np.asarray(loaded.__dict__[name][...]),
                                      err_msg=name)
    config = json.loads((hf / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == ["k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    run = json.loads((work / "eval" / "2.json").read_text())
    capsys.readouterr()
    def evaluate(*model):
        out = tmp_path / f"standalone{len(model)}.json"
        assert evaluate_cli.main([*model, "--teacher", str(teacher), "--data", str(work / "data" / "eval.jsonl"),
                                  *EVAL_ARGS, "--out", str(out)]) == 0
        return json.loads(out.read_text())

    for model in (["--model", str(hf)], ["--model", str(student), "--adapter", str(hf / "adapter")]):
        standalone = evaluate(*model)
        for name in ("greedy_pass@1", "pass@1", "pass@2", "mean_length", "reverse_kl", "overlap_ratio"):
            assert standalone[name] == pytest.approx(run[name], rel=1e-4, abs=1e-5), (model, name)
    assert evaluate("--model", str(student))["reverse_kl"] != pytest.approx(run["reverse_kl"], rel=1e-3)
    with pytest.raises(SystemExit):
        evaluate_cli.parse_args(["--model", str(student), "--data", "x.jsonl", "--adapter", str(tmp_path)])
