"""Bad input to the training system: each case fails with an error that names the problem (the
field, file and line, or directory), and nothing already saved is changed.

Config fields, values and objectives given on the command line are covered in test_cli.py; here
the trainer meets bad models, meshes, data, checkpoints and a diverging run. Checkpoints come
from a real run of the command line, copied for each test that damages them.
"""

import dataclasses
import json
import re
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from cli_helpers import (EXPERIMENT, REPO, assert_bitwise_equal, check_ok, digest, read_state,
                         run_cli, steps)
from opd_jax.config import apply_overrides, load_experiment
from opd_jax.data import DataError
from opd_jax.models import Transformer, save_pretrained, tiny_config
from opd_jax.training.checkpoint import CheckpointNotFound
from opd_jax.training.loop import Trainer

pytestmark = pytest.mark.slow


def _exp(work, *sets, data=None):
    """tiny_opd's smoke experiment in ``work``, on ``data`` (default: the run's own prompts)."""
    exp = apply_overrides(load_experiment(str(REPO / EXPERIMENT)),
                          ["run.progress=false", *sets, f"run.workdir={work}"])
    path = str(data or work / "prompts.jsonl")
    return dataclasses.replace(exp, data=dataclasses.replace(exp.data, path=path))


def _prompts(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = json.dumps({"prompt_ids": [5, 6, 7]})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of 4 steps with checkpoints at steps 2 and 4."""
    work = tmp_path_factory.mktemp("errors") / "run"
    check_ok(run_cli(work, "run.steps=4", "ckpt.every=2", "ckpt.keep=5"))
    assert steps(work) == [2, 4]
    return work


@pytest.fixture
def run_copy(trained, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(trained, work)
    return work


# ------------------------------------------------------------------ models and meshes


@pytest.mark.parametrize("sets,named", [
    (["data.batch_size=6"], "data.batch_size=6"),  # 6 prompts over 8 data-parallel devices
    (["step.grad_accum=3"], "step.grad_accum=3"),
    (["mesh.data=2", "mesh.tensor=2", "data.batch_size=3"], "data.batch_size=3"),
])
def test_batch_not_divisible_by_the_data_axes(tmp_path, sets, named):
    data = _prompts(tmp_path / "p.jsonl", [GOOD])
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        Trainer(_exp(tmp_path / "run", *sets, data=data))
    assert not (tmp_path / "run").exists()


def test_mesh_larger_than_the_devices(tmp_path):
    with pytest.raises(ValueError, match=r"needs 16 devices, only 8"):
        Trainer(_exp(tmp_path / "run", "mesh.data=16", data=tmp_path / "unused.jsonl"))


def test_teacher_and_student_vocabularies_differ(tmp_path):
    data = _prompts(tmp_path / "p.jsonl", [GOOD])
    with pytest.raises(ValueError, match=r"vocabularies differ \(student 32, teacher 40\)"):
        Trainer(_exp(tmp_path / "run", "teacher.model.config.vocab_size=40", data=data))


def _hf_model(path, words):
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    cfg = tiny_config(vocab_size=len(words), hidden_size=32, num_layers=1)
    save_pretrained(Transformer(cfg, rngs=nnx.Rngs(0)), path,
                    tokenizer=PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>"))
    return path


def test_teacher_and_student_tokenizers_differ(tmp_path):
    words = ["<unk>"] + [f"w{i}" for i in range(31)]
    student = _hf_model(tmp_path / "student", words)
    teacher = _hf_model(tmp_path / "teacher", words[:5] + ["other"] + words[6:])  # same size
    data = _prompts(tmp_path / "p.jsonl", [GOOD])
    with pytest.raises(ValueError, match=r"tokenizers differ.*'other'") as e:
        Trainer(_exp(tmp_path / "run", f"student.path={student}", f"teacher.model.path={teacher}",
                     data=data))
    assert str(student) in str(e.value) and str(teacher) in str(e.value)


def test_a_checkpoint_without_tokenizer_files_skips_the_tokenizer_comparison(tmp_path):
    """transformers builds an empty tokenizer for a bare checkpoint; that is no mismatch."""
    words = ["<unk>"] + [f"w{i}" for i in range(31)]
    student = tmp_path / "student"
    save_pretrained(Transformer(tiny_config(vocab_size=len(words), hidden_size=32, num_layers=1),
                                rngs=nnx.Rngs(0)), student)  # no tokenizer
    teacher = _hf_model(tmp_path / "teacher", words)
    data = _prompts(tmp_path / "p.jsonl", [GOOD])
    Trainer(_exp(tmp_path / "run", f"student.path={student}", f"teacher.model.path={teacher}", data=data))


# ------------------------------------------------------------------ data


@pytest.mark.parametrize("lines,sets,match", [
    ([], [], r"p\.jsonl: the file holds no records"),
    ([GOOD, GOOD, '{"prompt_ids": [1, 2'], [], r"p\.jsonl:3: invalid JSON"),
    ([GOOD, "[1, 2, 3]"], [], r"p\.jsonl:2: each line must be a JSON object"),
    ([GOOD, '{"text": "hi"}'], [], r"p\.jsonl:2: no 'prompt' or 'prompt_ids' field"),
    ([GOOD, json.dumps({"prompt_ids": [3, 32]})], [],
     r"p\.jsonl:2: prompt has token id 32 >= vocab_size 32"),
    ([GOOD, json.dumps({"prompt_ids": []})], [], r"p\.jsonl:2: the prompt is empty"),
    ([GOOD, json.dumps({"prompt_ids": [3] * 17})], [],
     r"p\.jsonl:2: the prompt has 17 tokens, more than data\.max_prompt_len=16"),
    ([GOOD, json.dumps({"prompt_ids": [3] * 12}), GOOD], ["sampler.max_new_tokens=120"],
     r"p\.jsonl:2: a prompt of 12 tokens plus sampler\.max_new_tokens=120 exceeds the student's "
     r"max_position_embeddings=128"),
], ids=["empty", "corrupt", "not-object", "no-prompt", "token-id", "empty-prompt", "too-long",
        "past-max-positions"])
def test_bad_data_file_names_the_line(tmp_path, lines, sets, match):
    data = _prompts(tmp_path / "p.jsonl", lines)
    with pytest.raises(DataError, match=match):
        Trainer(_exp(tmp_path / "run", *sets, data=data))


@pytest.mark.parametrize("sets,field", [
    (["objective=unisd", "objective.contrastive_coef=0.5"], "bad_teacher_prompt_ids"),
    (["objective=unisd", "objective.agreement=token"], "aux_teacher_prompts_ids"),
], ids=["contrastive", "agreement"])
def test_objective_inputs_missing_from_the_data(tmp_path, sets, field):
    data = _prompts(tmp_path / "p.jsonl", [GOOD] * 8)
    with pytest.raises(DataError, match=rf"p\.jsonl:1: objective 'unisd' needs a `{field}` field"):
        Trainer(_exp(tmp_path / "run", *sets, data=data))


def test_reward_objective_without_a_reward_function(tmp_path):
    data = _prompts(tmp_path / "p.jsonl", [GOOD] * 8)
    with pytest.raises(ValueError,
                       match=r"objective 'reinforce' trains on a reward: name one \(reward=math"):
        Trainer(_exp(tmp_path / "run", "objective=reinforce", data=data))


def test_topk_policy_gradient_on_completions_the_student_did_not_sample(tmp_path):
    """The PPO form of the top-k objective reads the sampling policy's top-k, which the sampler
    records for the student's own samples only: refused before any model is built when some steps
    train on the data's completions."""
    data = _prompts(tmp_path / "p.jsonl", [GOOD] * 8)
    with pytest.raises(ValueError, match=r"objective 'topk_opd' reads the sampling policy's top-k, "
                                         r"which the sampler records for the student's own samples"):
        Trainer(_exp(tmp_path / "run", "objective=topk_opd", "objective.surrogate=ppo",
                     "loop.lmbda=0.5", data=data))


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such data file"):
        Trainer(_exp(tmp_path / "run", data=tmp_path / "nope.jsonl"))


# ------------------------------------------------------------------ checkpoints


def test_resume_step_that_does_not_exist(run_copy):
    before = digest(run_copy / "checkpoints")
    trainer = Trainer(_exp(run_copy, "ckpt.resume_step=3"))
    with pytest.raises(CheckpointNotFound, match=r"no checkpoint for step 3 in .*checkpoints; "
                                                 r"available: \[2, 4\]"):
        trainer.run()
    with pytest.raises(ValueError, match=r"ckpt\.resume_step=2, but .*checkpoints also holds the "
                                         r"later checkpoints \[4\]"):
        Trainer(_exp(run_copy, "ckpt.resume_step=2")).run()
    assert digest(run_copy / "checkpoints") == before


def _truncate_arrays(step_dir):
    for f in (step_dir / "state").rglob("d/*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[:10])


def _garble_metadata(step_dir):
    (step_dir / "state" / "_METADATA").write_text("{not json")


def _drop_state(step_dir):
    shutil.rmtree(step_dir / "state")


@pytest.mark.parametrize("damage", [_truncate_arrays, _garble_metadata, _drop_state],
                         ids=["truncated-arrays", "garbled-metadata", "missing-state"])
def test_damaged_checkpoint_names_the_directory_and_keeps_the_good_one(run_copy, damage):
    good = read_state(run_copy, 2)
    damage(run_copy / "checkpoints" / "4")
    before = digest(run_copy / "checkpoints")
    trainer = Trainer(_exp(run_copy, "run.steps=6"))
    with pytest.raises(ValueError, match=r"checkpoints/4 cannot be restored .*steps \[2\]"):
        trainer.run()
    assert digest(run_copy / "checkpoints") == before  # neither checkpoint touched or removed
    assert json.loads((run_copy / "config.json").read_text())["run"]["steps"] == 4  # nor the config
    assert trainer.restore(2) and int(trainer.state.step) == 2  # the good one still restores
    assert_bitwise_equal(read_state(run_copy, 2), good)


# ------------------------------------------------------------------ divergence


@pytest.mark.parametrize("lr,what", [
    ("1e30", r"opt/update_norm is inf"),  # the first update overflows: stops at once
    ("1e15", r"loss/total is nan"),  # finite but huge weights, then a NaN loss a step later
])
def test_divergence_stops_and_keeps_the_checkpoints(run_copy, lr, what):
    earlier = {s: read_state(run_copy, s) for s in (2, 4)}
    before = digest(run_copy / "checkpoints")
    proc = run_cli(run_copy, "run.steps=8", "ckpt.every=1", "ckpt.keep=9", f"optim.lr={lr}",
                   "run.allow_config_change=true")  # resumed with another learning rate
    assert proc.returncode == 1, proc.stderr[-3000:]
    found = re.search(what + r" at step (\d+); stopping without saving\. The last good checkpoint "
                      r"\(step (\d+)\)", proc.stderr)
    assert found and "FloatingPointError" in proc.stderr, proc.stderr[-3000:]
    bad, last = int(found[1]), int(found[2])
    assert steps(run_copy) == sorted({2, 4, last}) and last == max(4, bad - 1)  # nothing at `bad`
    after = digest(run_copy / "checkpoints")
    assert {k: v for k, v in after.items() if k.split("/")[0] in ("2", "4")} == before
    for s, state in earlier.items():
        assert_bitwise_equal(read_state(run_copy, s), state)
    state = read_state(run_copy, last)  # the last checkpoint restores and is finite
    assert int(state["step"]) == last
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))
