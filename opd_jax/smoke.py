"""Tiny local stand-ins for real checkpoints and data, for smoke runs and tests (nothing is
downloaded).

- :func:`chat_tokenizer`: a ``transformers`` fast tokenizer with one token per character and
  Qwen-style special tokens (``<|im_start|>``, ``<|im_end|>`` = EOS, ``<|endoftext|>`` = pad,
  ``<think>``, ``</think>``), and a chat template of the same shape as Qwen3's: ``<|im_start|>role
  \\n content<|im_end|>\\n`` per turn, the generation prompt ``<|im_start|>assistant\\n``, and with
  ``enable_thinking=False`` an empty thinking block after it.
- :func:`write_checkpoint`: a randomly initialised model of a given configuration written as a
  Hugging Face checkpoint with that tokenizer and a ``generation_config.json`` that lists two
  end-of-sequence ids (``<|im_end|>`` and ``<|endoftext|>``, as Qwen3's does).
- :func:`math_records`: arithmetic problems with answers, as chat records (``messages``), with
  optionally a privileged teacher context holding a worked solution (self-distillation).
- :func:`prepare_run`: what the experiment files' ``smoke`` settings call to write all of these
  into the work directory, so that a smoke run takes the real-checkpoint code path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import string

import numpy as np

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
PAD, EOS, END_OF_TEXT = "<|endoftext|>", "<|im_end|>", "<|endoftext|>"
CHARACTERS = string.printable.replace("\x0b", "").replace("\x0c", "").replace("\r", "")
# The chat template (Jinja), written for this tokenizer; the layout follows Qwen3's.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{%- endif -%}")


def chat_tokenizer():
    """The character tokenizer with special tokens and :data:`CHAT_TEMPLATE` (vocabulary:
    ``len(SPECIALS) + len(CHARACTERS)`` tokens)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + tuple(CHARACTERS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                  unk_token=PAD, additional_special_tokens=list(SPECIALS[1:]))
    out.chat_template = CHAT_TEMPLATE
    return out


def bpe_chat_tokenizer(vocab_size: int = 400, *, seed: int = 0):
    """A byte-level BPE tokenizer with the special tokens and chat template of
    :func:`chat_tokenizer`, trained on :func:`math_records`' text (``seed``): its merges of
    digits, words and spaces cut the text elsewhere than one character per token, as a teacher of
    another model family would. ``vocab_size`` counts the 5 specials, the 256 bytes and the
    merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [json.dumps(r) for r in math_records(256, seed=seed, privileged=True)]
    corpus.append(CHARACTERS + "é–→∑")
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                  unk_token=None, additional_special_tokens=list(SPECIALS[1:]))
    out.chat_template = CHAT_TEMPLATE
    return out


def eos_ids(tokenizer) -> tuple[int, int]:
    """``(<|im_end|>, <|endoftext|>)``: the ids the generation config lists."""
    return tuple(tokenizer.convert_tokens_to_ids([EOS, END_OF_TEXT]))


def write_checkpoint(path: str, cfg, *, seed: int = 0, tokenizer=None) -> str:
    """A random ``Transformer(cfg)`` written to ``path`` as an HF checkpoint with ``tokenizer``
    (default :func:`chat_tokenizer`) and both EOS ids in ``generation_config.json``; kept if
    ``path`` already holds one."""
    from flax import nnx

    from opd_jax.export import export
    from opd_jax.models import Transformer
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    tokenizer = tokenizer or chat_tokenizer()
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the model's "
                         f"vocab_size={cfg.vocab_size}")
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    export(model, path, tokenizer=tokenizer, eos_ids=eos_ids(tokenizer))
    return path


def math_records(n: int, *, seed: int = 0, privileged: bool = False) -> list[dict]:
    """``n`` problems ``a op b`` with their answers as chat records; with ``privileged``, a
    ``teacher_messages`` context that shows a worked solution before the same question."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(1, 20, 2))
        op = str(rng.choice(["+", "-", "*"]))
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        question = f"What is {a} {op} {b}? Put the final answer in \\boxed{{}}."
        record = {"messages": [{"role": "user", "content": question}], "answer": str(value)}
        if privileged:
            solution = f"{a} {op} {b} = {value}, so the answer is \\boxed{{{value}}}."
            record["teacher_messages"] = [{"role": "user", "content": (
                f"{question}\nA correct solution, for reference: {solution}\n"
                "Solve it in your own words.")}]
        out.append(record)
    return out


def write_jsonl(path: str, records) -> str:
    """Write ``records`` as JSONL atomically (a temporary file renamed into place)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
    return path


def student_config():
    """A tiny Qwen3 of the architecture of Qwen3-1.7B (GQA, q/k norms, tied embedding)."""
    from opd_jax.models.config import tiny_config
    return tiny_config("qwen3", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=512,
                       tie_word_embeddings=True)


def teacher_config():
    """A wider tiny Qwen3 with an untied head (as Qwen3-8B)."""
    return student_config().replace(hidden_size=48, intermediate_size=96, tie_word_embeddings=False)


def prepare_run(exp, *, privileged: bool = False):
    """An experiment whose models are random inits (``config``, no ``path``) and which has no
    data path, turned into one that reads real files: the models written once as HF checkpoints
    under ``<workdir>/models/{student,teacher}``, the problems as chat records in
    ``<workdir>/data/train.jsonl`` (16, ``data.path``) and ``eval.jsonl`` (8, held out; also
    ``eval.path`` unless that is set)."""
    work = exp.run.workdir
    paths = {}
    for who, spec in (("student", exp.student), ("teacher", exp.teacher.model)):
        if spec is None or spec.path:
            continue
        paths[who] = write_checkpoint(os.path.join(work, "models", who), spec.config, seed=spec.seed)
    data = os.path.join(work, "data", "train.jsonl")
    if not os.path.exists(data):
        write_jsonl(os.path.join(work, "data", "eval.jsonl"),
                          math_records(8, seed=1, privileged=privileged))
        write_jsonl(data, math_records(16, seed=0, privileged=privileged))
    as_path = lambda spec, p: dataclasses.replace(spec, path=p, config=None)  # noqa: E731
    if "student" in paths:
        exp = dataclasses.replace(exp, student=as_path(exp.student, paths["student"]))
    if "teacher" in paths:
        exp = dataclasses.replace(exp, teacher=dataclasses.replace(
            exp.teacher, model=as_path(exp.teacher.model, paths["teacher"])))
    held_out = exp.eval.path or os.path.join(work, "data", "eval.jsonl")
    return dataclasses.replace(exp, data=dataclasses.replace(exp.data, path=data),
                               eval=dataclasses.replace(exp.eval, path=held_out))
