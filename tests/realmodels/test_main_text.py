"""``opd_jax.main``'s text set-up, in process: the tokenizer from the student checkpoint (or a
named one), chat records through its template, EOS ids from its generation config, the teacher's
tokenizer checked, and rewards by name; errors before anything is compiled."""

import dataclasses
import json

import pytest
from realmodels_helpers import write_records

import opd_jax.training.loop  # noqa: F401  (imported here, not under capsys; see below)
from opd_jax import main as M
from opd_jax import smoke
from opd_jax.data import DataError
from opd_jax.models.tokenizer import TokenizerMismatch
from opd_jax.sampling import SamplerConfig
from opd_jax.training.config import (DataConfig, Experiment, ModelSpec, RunConfig,
                                     TeacherSpec)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataWithText(DataConfig):
    """DataConfig with the two fields proposed for it (read by main when they exist)."""
    tokenizer: str = ""
    chat_template_kwargs: str = ""


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return smoke.write_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "student"),
                                  smoke.student_config())


def _exp(student, data, teacher=None, data_cls=DataConfig, **data_kw):
    return Experiment(
        student=ModelSpec(path=student),
        teacher=TeacherSpec(kind="model", model=ModelSpec(path=teacher)) if teacher
        else TeacherSpec(kind="initial"),
        sampler=SamplerConfig(max_new_tokens=8),
        data=data_cls(path=data, max_prompt_len=128, **data_kw),
        run=RunConfig(steps=1, workdir="unused"))


def test_text_prompts_with_the_checkpoints_tokenizer_and_eos(tmp_path, student):
    data = write_records(tmp_path / "p.jsonl", [{"prompt": "What is 1 + 1?", "answer": "2"}])
    exp, tok, (e,) = M.prepare_text(_exp(student, data, chat_template=True))
    assert exp.sampler.eos_ids == smoke.eos_ids(tok) == (2, 0)  # generation_config.json's
    chat = [{"role": "user", "content": "What is 1 + 1?"}]
    assert list(e.prompt_ids) == tok.apply_chat_template(chat, add_generation_prompt=True,
                                                         tokenize=True)["input_ids"]
    kept, _, _ = M.prepare_text(dataclasses.replace(exp, sampler=exp.sampler.replace(eos_ids=(5,))))
    assert kept.sampler.eos_ids == (5,)  # a configured list wins
    reward = M.resolve_reward("math", tok, exp.sampler.eos_ids)
    ids = tok("\\boxed{2}", add_special_tokens=False)["input_ids"] + [2]
    assert reward(e, ids) == 1.0
    assert M.resolve_reward(None, tok, ()) is None
    with pytest.raises(ValueError, match="unknown reward 'maths'"):
        M.resolve_reward("maths", tok, ())


def test_proposed_data_fields_name_a_tokenizer_and_template_kwargs(tmp_path, student):
    other = smoke.chat_tokenizer()
    other.chat_template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}" \
                          "{% if enable_thinking is false %}!{% endif %}"
    other.save_pretrained(str(tmp_path / "tok"))
    data = write_records(tmp_path / "p.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    _, tok, (e,) = M.prepare_text(_exp(student, data, data_cls=DataWithText,
                                       tokenizer=str(tmp_path / "tok"),
                                       chat_template_kwargs='{"enable_thinking": false}'))
    assert tok.decode(list(e.prompt_ids)) == "<hi>!"


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
        M.prepare_text(_exp(student, data, teacher=teacher))


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
    assert M.main(["--config", str(exp_file), "--reward", "maths"]) == 1
    assert "unknown reward 'maths'" in capsys.readouterr().err
    (tmp_path / "p.jsonl").write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    assert M.main(["--config", str(exp_file)]) == 1
    assert "p.jsonl:1: messages[0] must be" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError):
        M.prepare_text(_exp(student, str(tmp_path / "p.jsonl")))
