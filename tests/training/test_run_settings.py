"""Settings that decide what a run trains on, and who owns them.

- A recipe's documented loop defaults are what runs (GKD: lambda 0.5; UniSD: EMA 0.9 every 10
  steps) unless the loop's own setting is given; config.json records the resolved values.
- A policy-gradient recipe is refused on batches that are not the student's own samples.
- A resumed run whose configuration differs from its checkpoint's is refused, naming the fields,
  with the work directory untouched; allowed on request, and then recorded in config.json.
"""

import dataclasses
import json
import os

import pytest

import opd_jax.objectives as O
from cli_helpers import digest
from opd_jax.config import ConfigOverrideError, apply_overrides, to_dict
from opd_jax.training.config import LoopConfig, TeacherSpec, resolve
from opd_jax.training.loop import Trainer
from opd_jax.training.safety import (ConfigChangedError, check_config_change, config_changes,
                                    field_defaults)
from test_loop import experiment


def _exp(tmp_path, objective=O.OPDConfig(), **kw):
    kw.setdefault("loop", LoopConfig())  # every loop setting left to the recipe
    return experiment(tmp_path, objective, steps=kw.pop("steps", 2), lr=1e-3, samples=2, **kw)


def test_a_recipes_loop_defaults_are_resolved_unless_set(tmp_path):
    assert resolve(_exp(tmp_path, O.GKDConfig())).loop.lmbda == 0.5
    assert resolve(_exp(tmp_path, O.GKDConfig(), loop=LoopConfig(lmbda=1.0))).loop.lmbda == 1.0
    assert resolve(_exp(tmp_path)).loop.lmbda == 1.0
    unisd = resolve(_exp(tmp_path, O.UniSDConfig(), teacher=TeacherSpec(kind="ema")))
    assert (unisd.teacher.ema_decay, unisd.teacher.ema_every) == (0.9, 10)
    opd = resolve(_exp(tmp_path, teacher=TeacherSpec(kind="ema", ema_every=3)))
    assert (opd.teacher.ema_decay, opd.teacher.ema_every) == (0.999, 3)
    with pytest.raises(ConfigOverrideError, match="objective.lmbda"):  # no dead field to set
        apply_overrides(_exp(tmp_path), ["objective=gkd", "objective.lmbda=0.5"])


def test_objective_gkd_trains_at_gkds_lambda_and_records_it(tmp_path):
    exp = apply_overrides(_exp(tmp_path, steps=6, data_kw=dict(completions=True)),
                          ["objective=gkd"])
    trainer = Trainer(exp)
    assert trainer.exp.loop.lmbda == 0.5
    trainer.run()
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        sources = [json.loads(line)["source/on_policy"] for line in f]
    assert 0 < sum(sources) < len(sources) == 6  # data steps too: lambda is not 1
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["loop"]["lmbda"] == 0.5 and "lmbda" not in cfg["objective"]


def test_unisds_ema_teacher_follows_unisds_period(tmp_path):
    trainer = Trainer(_exp(tmp_path, O.UniSDConfig(), teacher=TeacherSpec(kind="ema")))
    assert (trainer.teacher.decay, trainer.teacher.every) == (0.9, 10)


@pytest.mark.parametrize("objective,loop,named", [
    (O.OPDConfig(), LoopConfig(lmbda=0.5), "the data's completions"),
    (O.EOPDConfig(k=4), LoopConfig(lmbda=0.0, seq_kd=True), r"teacher samples \(loop.seq_kd\)"),
    (O.ReinforceConfig(), LoopConfig(lmbda=0.5), "the data's completions"),
], ids=["opd-data", "eopd-seq_kd", "reinforce-data"])
def test_policy_gradient_on_other_samples_is_refused(tmp_path, objective, loop, named):
    name = O.recipe_name(objective)
    with pytest.raises(ValueError, match=rf"objective '{name}' is a policy gradient .*{named}"):
        Trainer(_exp(tmp_path, objective, loop=loop), reward_fn=lambda e, c: 0.0)
    assert not (tmp_path / "run").exists()


def test_policy_gradient_with_a_cold_start_and_distribution_recipes_off_policy_are_allowed(
        tmp_path):
    Trainer(_exp(tmp_path, loop=LoopConfig(cold_start_steps=2)))  # SFT on teacher samples
    Trainer(_exp(tmp_path, O.SGTopKConfig(k=4), loop=LoopConfig(lmbda=0.0, seq_kd=True)))


def test_config_changes_ignore_run_only_settings_and_paths_inside_the_run():
    old = {"_type": "Experiment", "optim": {"lr": 1e-3}, "run": {"steps": 2, "workdir": "/a/run"},
           "data": {"path": "/a/run/prompts.jsonl"}, "mesh": {"data": 8},
           "objective": {"_type": "OPDConfig", "kl_coef": 1.0}}
    moved = {"_type": "Experiment", "optim": {"lr": 1e-3}, "run": {"steps": 9, "workdir": "/b/x"},
             "data": {"path": "/b/x/prompts.jsonl"}, "mesh": {"data": 2},
             "objective": {"_type": "OPDConfig", "kl_coef": 1.0}}
    assert config_changes(old, moved) == {}
    other = dict(moved, data={"path": "/b/other.jsonl"},
                 objective={"_type": "GKDConfig", "beta": 0.5})
    assert config_changes(old, other) == {
        "data.path": ("<workdir>/prompts.jsonl", "/b/other.jsonl"),
        "objective": ("OPDConfig", "GKDConfig"), "objective.beta": (None, 0.5),
        "objective.kl_coef": (1.0, None)}


def test_resume_with_another_config_is_refused_unless_allowed(tmp_path):
    base = _exp(tmp_path)
    base = dataclasses.replace(base, ckpt=dataclasses.replace(base.ckpt, every=1))
    Trainer(base).run()
    work = tmp_path / "run"
    before = digest(work)
    assert sorted(os.listdir(work / "hf")) == ["step_2"]  # the export at the end
    changed = apply_overrides(base, ["optim.lr=3e-3", "objective.kl_coef=0.5", "run.steps=3",
                                     "ckpt.every=3", "run.log_every=2", "eval.k=3",
                                     "ckpt.export_every=1", "ckpt.export_dtype=bfloat16"])
    with pytest.raises(ConfigChangedError) as e:
        Trainer(changed).run()
    msg = str(e.value)
    assert "step 2" in msg and "optim.lr: 0.001 -> 0.003" in msg and "objective.kl_coef" in msg
    assert "run.steps" not in msg and "ckpt.every" not in msg and "log_every" not in msg
    assert "eval" not in msg and "export" not in msg  # evaluations and exports: run-only
    assert "run.allow_config_change=true" in msg
    assert digest(work) == before  # nothing written, not even config.json

    Trainer(apply_overrides(changed, ["run.allow_config_change=true"])).run()
    cfg = json.loads((work / "config.json").read_text())
    assert cfg["optim"]["lr"] == 3e-3 and cfg["run"]["steps"] == 3
    [entry] = cfg["history"]
    assert entry["step"] == 2 and entry["changes"] == {"objective.kl_coef": [1.0, 0.5],
                                                       "optim.lr": [1e-3, 3e-3]}
    # the new settings are now the checkpoint's: resuming with them needs no permission, and the
    # history is kept
    Trainer(apply_overrides(changed, ["run.steps=4"])).run()
    assert json.loads((work / "config.json").read_text())["history"] == [entry]


def test_the_reward_is_a_training_setting_only_for_objectives_that_train_on_it(tmp_path):
    for objective, trains_on_it in ((O.OPDConfig(), False), (O.ReinforceConfig(), True)):
        exp = resolve(_exp(tmp_path, objective))
        changed = dataclasses.replace(exp, reward="math")

        def check():
            return check_config_change(to_dict(exp), changed, step=2, allow=False, where="run")
        if trains_on_it:
            with pytest.raises(ConfigChangedError, match="reward: '' -> 'math'"):
                check()
        else:
            assert check() is None  # it scores evaluations only


def test_a_setting_added_to_the_code_since_the_checkpoint_is_no_change_at_its_default(tmp_path):
    exp = resolve(_exp(tmp_path))
    current = to_dict(exp)
    saved = json.loads(json.dumps(current))
    del saved["teacher"]["served"]  # a checkpoint from before served teachers existed
    del saved["loop"]["teacher_mix"]
    assert config_changes(saved, current, field_defaults(exp)) == {}
    moved = to_dict(dataclasses.replace(exp, loop=dataclasses.replace(exp.loop, teacher_mix=0.5)))
    assert config_changes(saved, moved, field_defaults(exp)) == {"loop.teacher_mix": (None, 0.5)}
    del current["optim"]["b1"]  # a setting the code no longer has is a change
    assert config_changes(saved, current, field_defaults(exp)) == {"optim.b1": (0.9, None)}
    # text settings: unset in an older checkpoint, unchanged at their defaults; a template
    # keyword argument is a change of what the prompts are, named by its key
    for name in ("tokenizer", "chat_template_kwargs", "eval", "reward"):
        (saved["data"] if name in saved["data"] else saved).pop(name)
    assert config_changes(saved, to_dict(exp), field_defaults(exp)) == {}
    thinking = dataclasses.replace(exp, data=dataclasses.replace(
        exp.data, chat_template_kwargs={"enable_thinking": False}))
    assert config_changes(saved, to_dict(thinking), field_defaults(thinking)) == {
        "data.chat_template_kwargs.enable_thinking": (None, False)}
