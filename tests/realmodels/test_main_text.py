"""A run's text set-up (``opd_jax.training.text``, what the Trainer and so the command line use),
in process: the tokenizer from the student checkpoint (or a named one), chat records through its
template, EOS ids from its generation config, the teacher's tokenizer checked, rewards by name,
held-out data read alike; errors before anything is compiled or written."""

import dataclasses
import json
import types

import numpy as np
import pytest
from realmodels_helpers import write_records

import opd_jax.training.loop  # noqa: F401  (imported here, not under capsys; see below)
from opd_jax import main as M
from opd_jax import smoke
from opd_jax.data import DataError
from opd_jax.models.tokenizer import TokenizerMismatch
from opd_jax.sampling import SamplerConfig
from opd_jax.training import text as T
from opd_jax.training.config import (DataConfig, EvalConfig, Experiment, ModelSpec, RunConfig,
                                     TeacherSpec)
from opd_jax.training.loop import Trainer


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return smoke.write_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "student"),
                                  smoke.student_config())


def _exp(student, data, teacher=None, workdir="unused", **kw):
    data_kw = {k: kw.pop(k) for k in list(kw) if k in {f.name for f in
                                                        dataclasses.fields(DataConfig)}}
    return Experiment(
        student=ModelSpec(path=student),
        teacher=TeacherSpec(kind="model", model=ModelSpec(path=teacher)) if teacher
        else TeacherSpec(kind="initial"),
        sampler=SamplerConfig(max_new_tokens=8),
        data=DataConfig(path=data, max_prompt_len=128, **data_kw),
        run=RunConfig(steps=1, workdir=str(workdir), progress=False, tensorboard=False), **kw)


def _ids(tok, chat, **kw):
    out = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_text_prompts_with_the_checkpoints_tokenizer_and_eos(tmp_path, student):
    data = write_records(tmp_path / "p.jsonl", [{"prompt": "What is 1 + 1?", "answer": "2"}])
    text = T.prepare(_exp(student, data, chat_template=True))
    tok, (e,) = text.tokenizer, text.examples
    assert text.exp.sampler.eos_ids == smoke.eos_ids(tok) == (2, 0)  # generation_config.json's
    assert list(e.prompt_ids) == _ids(tok, [{"role": "user", "content": "What is 1 + 1?"}])
    configured = _exp(student, data, chat_template=True)
    configured = dataclasses.replace(configured, sampler=configured.sampler.replace(eos_ids=(5,)))
    assert T.prepare(configured).exp.sampler.eos_ids == (5,)  # a configured list wins
    assert text.reward_fn is None and text.eval_examples is None
    reward = T.prepare(_exp(student, data, chat_template=True, reward="math")).reward_fn
    ids = tok("\\boxed{2}", add_special_tokens=False)["input_ids"] + [2]
    assert reward(e, ids) == 1.0 and reward(e, ids[:-1]) == 0.0  # unfinished: no answer
    with pytest.raises(ValueError, match="unknown reward 'maths'"):
        T.prepare(_exp(student, data, reward="maths"))
    with pytest.raises(ValueError, match="both a reward function and reward='math'"):
        T.prepare(_exp(student, data, reward="math"), reward_fn=lambda e, c: 0.0)


def test_a_named_tokenizer_and_template_kwargs(tmp_path, student):
    other = smoke.chat_tokenizer()
    other.chat_template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}" \
                          "{% if enable_thinking is false %}!{% endif %}"
    other.save_pretrained(str(tmp_path / "tok"))
    data = write_records(tmp_path / "p.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    text = T.prepare(_exp(student, data, tokenizer=str(tmp_path / "tok"),
                          chat_template_kwargs={"enable_thinking": False}))
    assert text.tokenizer.decode(list(text.examples[0].prompt_ids)) == "<hi>!"


def test_held_out_records_are_read_alike_and_need_a_reward_function(tmp_path, student):
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    data = write_records(tmp_path / "p.jsonl", [{"messages": chat}])
    held = write_records(tmp_path / "e.jsonl", [{"messages": chat, "answer": str(i)}
                                                for i in range(5)])
    exp = _exp(student, data, eval=EvalConfig(path=held, limit=3),
               chat_template_kwargs={"enable_thinking": False})
    with pytest.raises(ValueError, match=r"eval\.path=.*e\.jsonl is set but the run has no reward "
                                         r"function .*--set reward=math"):
        T.prepare(exp)
    text = T.prepare(dataclasses.replace(exp, reward="math"))
    assert [e.answer for e in text.eval_examples] == ["0", "1", "2"]  # eval.limit
    assert list(text.eval_examples[0].prompt_ids) == _ids(text.tokenizer, chat,
                                                          enable_thinking=False)
    assert text.eval_examples[0].prompt_ids == text.examples[0].prompt_ids


def test_a_trainer_built_in_python_prepares_text_as_the_command_line_does(tmp_path, student):
    """No tokenizer, examples or EOS ids given: the Trainer reads them from the checkpoint."""
    chat = [{"role": "user", "content": "What is 1 + 1?"}]
    data = write_records(tmp_path / "p.jsonl", [{"messages": chat, "answer": "2"}] * 8)
    trainer = Trainer(_exp(student, data, reward="math", workdir=tmp_path / "run"))
    assert trainer.exp.sampler.eos_ids == (2, 0) and trainer.tokenizer is not None
    assert list(trainer.examples[0].prompt_ids) == _ids(trainer.tokenizer, chat)
    ids = np.asarray(trainer.tokenizer("\\boxed{2}", add_special_tokens=False)["input_ids"] + [0])
    assert trainer.reward_fn(trainer.examples[0], ids) == 1.0  # <|endoftext|> ends it too
    with pytest.raises(ValueError, match="no held-out data to evaluate on: set eval.path"):
        trainer.evaluate_heldout()


def test_the_experiment_files_reward_fn_and_the_configured_reward(tmp_path, student):
    exp = _exp(student, "unused")
    fn = lambda e, c: 1.0  # noqa: E731
    by_name = types.SimpleNamespace(reward_fn="math")
    assert M.reward_of(by_name, exp) == (dataclasses.replace(exp, reward="math"), None)
    assert M.reward_of(types.SimpleNamespace(reward_fn=fn), exp) == (exp, fn)
    assert M.reward_of(types.SimpleNamespace(), exp) == (exp, None)
    configured = dataclasses.replace(exp, reward="pkg.mod:factory")
    for module in (by_name, types.SimpleNamespace(reward_fn=fn)):  # the configuration wins
        assert M.reward_of(module, configured) == (configured, None)
    with pytest.raises(ValueError, match="reward_fn must be a function or a name, got int"):
        M.reward_of(types.SimpleNamespace(reward_fn=3), exp)


def test_a_teacher_with_another_tokenizer_is_refused_before_any_compile(tmp_path, student):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    vocab = dict(smoke.chat_tokenizer().get_vocab())
    vocab["<swapped>"] = vocab.pop("7")
    unk = "<|endoftext|>"
    word_level = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    other = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token=unk)
    teacher = smoke.write_checkpoint(str(tmp_path / "teacher"), smoke.teacher_config(),
                                     tokenizer=other)
    data = write_records(tmp_path / "p.jsonl", [{"prompt_ids": [5, 6]}])
    with pytest.raises(TokenizerMismatch, match=rf"id {vocab['<swapped>']} is '7' for the student "
                                                rf"\(.*student\) but '<swapped>' for the teacher"):
        T.prepare(_exp(student, data, teacher=teacher))


def test_cli_errors_exit_before_training(tmp_path, capsys, student):
    """(``opd_jax.training.logging.Progress`` binds ``sys.stderr`` when first imported; under
    capsys that would be the capture stream, closed after this test: hence the import above.)"""
    data = write_records(tmp_path / "p.jsonl", [{"prompt": "x"}])
    exp_file = tmp_path / "exp.py"
    exp_file.write_text(
        "from opd_jax.sampling import SamplerConfig\n"
        "from opd_jax.training.config import (DataConfig, Experiment, ModelSpec, RunConfig,\n"
        "                                     TeacherSpec)\n"
        "def get_config(arg):\n"
        f"    return Experiment(student=ModelSpec(path={student!r}),\n"
        "        teacher=TeacherSpec(kind='initial'),\n"
        f"        sampler=SamplerConfig(max_new_tokens=8), data=DataConfig(path={data!r}),\n"
        f"        run=RunConfig(steps=1, workdir={str(tmp_path / 'run')!r}))\n")
    for flags in (["--reward", "maths"], ["--set", "reward=maths"]):
        assert M.main(["--config", str(exp_file), *flags]) == 1
        assert "unknown reward 'maths'" in capsys.readouterr().err
    assert M.main(["--config", str(exp_file), "--set", f"eval.path={data}"]) == 1
    err = capsys.readouterr().err
    assert "is set but the run has no reward function" in err and not (tmp_path / "run").exists()
    (tmp_path / "p.jsonl").write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    assert M.main(["--config", str(exp_file)]) == 1
    assert "p.jsonl:1: messages[0] must be" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError):
        T.prepare(_exp(student, str(tmp_path / "p.jsonl")))
