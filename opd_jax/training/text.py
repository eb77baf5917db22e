"""A run's text set-up, settled before any model is built: the tokenizers, the end-of-sequence
ids, the records of the training and held-out data, and the reward function.

- The tokenizer is the student checkpoint's (``student.path``: a local directory or a repo id in
  the local HF cache), or ``data.tokenizer`` when set, or the one given to the ``Trainer``; every
  teacher checkpoint's tokenizer must equal it (the error names the first differing token).
  Records whose text a teacher reads (``teacher_messages``, ``teacher_prompt``) go through the
  teacher's tokenizer and chat template.
- ``sampler.eos_ids``, when empty, become every end-of-sequence id of the student's
  ``generation_config.json`` (Qwen3 lists two), else the tokenizer's EOS: without them a real
  model's completions never stop. The resolved ids are what ``config.json`` records.
- The records of ``data.path`` and ``eval.path`` are read with the same options
  (``data.chat_template``, ``data.chat_template_kwargs``, ``data.system_prompt``,
  ``data.max_prompt_len``).
- The reward function: the one given, or the one ``reward`` names (:func:`opd_jax.rewards.get`),
  built from the tokenizer and the EOS ids. A held-out evaluation needs one.
- The environment of multi-turn episodes: the one given, or the one ``environment`` names
  (:func:`opd_jax.environments.get`); its text replies are rendered with the data's chat
  template options (:func:`responder`).

The ``Trainer`` calls :func:`prepare` itself, so a Python user building one directly gets what the
command line does.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

from opd_jax import data as D
from opd_jax import environments as EN
from opd_jax.training.config import Experiment, ModelSpec


class Text(NamedTuple):
    exp: Experiment  # with sampler.eos_ids resolved
    tokenizer: Any  # the student's (None: a random-init student without a named tokenizer)
    teacher_tokenizer: Any  # the first teacher checkpoint's (None: none, or no teacher checkpoint)
    examples: list[D.Example]
    eval_examples: list[D.Example] | None  # eval.path's records (None without eval.path)
    reward_fn: Callable[[D.Example, Any], float] | None
    environment: EN.Environment  # what replies between the turns of multi-turn episodes


def teacher_paths(exp: Experiment) -> list[str]:
    """The checkpoint directories (or repo ids) of the run's separate teacher models."""
    t = exp.teacher
    specs = [t.model] if t.kind == "model" else list(t.models) if t.kind == "models" else []
    return [s.path for s in specs if s.path]


def vocab_size(spec: ModelSpec) -> int:
    """The vocabulary size of a model, from its checkpoint's config.json or its config."""
    if not spec.path:
        return spec.config.vocab_size
    from opd_jax.models.hf_io import read_hf_config
    return int(read_hf_config(spec.path)["vocab_size"])


def tokenizers(exp: Experiment, tokenizer=None) -> tuple[Any, Any]:
    """``(student's tokenizer, teacher's tokenizer or None)``, the teachers' checked against the
    student's (see the module docstring)."""
    from opd_jax.models import load_tokenizer
    from opd_jax.models.tokenizer import check_same_tokenizer, tokenizer_of
    named = exp.data.tokenizer
    if tokenizer is not None:
        tok, name = tokenizer, "given"
    elif named:
        tok, name = load_tokenizer(named), f"data.tokenizer={named}"
    else:
        tok, name = tokenizer_of(exp.student.path), exp.student.path
    t_tok = None
    for path in teacher_paths(exp):
        other = tokenizer_of(path)
        if other is not None and tok is not None:
            check_same_tokenizer(tok, other, student_name=f"student ({name})",
                                 teacher_name=f"teacher ({path})")
        t_tok = t_tok or other
    return tok, t_tok


def read(exp: Experiment, path: str, tokenizer, teacher_tokenizer=None) -> list[D.Example]:
    """The records of ``path`` read with the run's text options."""
    d = exp.data
    return D.load_examples(path, tokenizer=tokenizer, teacher_tokenizer=teacher_tokenizer,
                           max_prompt_len=d.max_prompt_len, vocab_size=vocab_size(exp.student),
                           chat_template=d.chat_template, template_kwargs=d.chat_template_kwargs,
                           system_prompt=d.system_prompt)


def reward(exp: Experiment, reward_fn, tokenizer) -> Callable | None:
    """The run's reward function: ``reward_fn``, or the one ``exp.reward`` names (not both)."""
    if reward_fn is not None and exp.reward:
        raise ValueError(f"both a reward function and reward={exp.reward!r} were given; give one "
                         "(the configured name is recorded in config.json)")
    if not exp.reward:
        return reward_fn
    from opd_jax import rewards
    return rewards.get(exp.reward, tokenizer, exp.sampler.eos_ids)


def environment(exp: Experiment, given: EN.Environment | None, tokenizer, reward_fn) -> EN.Environment:
    """The run's environment: ``given``, or the one ``exp.environment`` names (not both)."""
    if given is not None and exp.environment:
        raise ValueError(f"both an environment and environment={exp.environment!r} were given; give one")
    if given is not None:
        return given
    return EN.get(exp.environment, tokenizer=tokenizer, eos_ids=exp.sampler.eos_ids, reward_fn=reward_fn)


def responder(exp: Experiment, text: Text) -> Callable:
    """``f(examples)``: the environment's checked replies to those rows
    (:func:`opd_jax.environments.responder`), text rendered as the records were read."""
    opts = D.TextOptions.of(exp.data, text.tokenizer)
    render = None if text.tokenizer is None else functools.partial(D.render_turn, opts=opts)
    return functools.partial(EN.responder, text.environment, render=render, vocab_size=vocab_size(exp.student))


def prepare(exp: Experiment, *, tokenizer=None, examples: list[D.Example] | None = None,
            reward_fn=None, env: EN.Environment | None = None) -> Text:
    """Everything of the module docstring; ``examples`` given are used instead of reading
    ``data.path``."""
    import dataclasses

    from opd_jax.models.tokenizer import default_eos_ids
    tok, t_tok = tokenizers(exp, tokenizer)
    eos = default_eos_ids(exp.student.path, tok, exp.sampler.eos_ids)
    exp = dataclasses.replace(exp, sampler=exp.sampler.replace(eos_ids=eos))
    fn = reward(exp, reward_fn, tok)
    if exp.eval.path and fn is None:
        raise ValueError(f"eval.path={exp.eval.path} is set but the run has no reward function to "
                         "score the answers with: set reward (e.g. --set reward=math), define "
                         "reward_fn in the experiment file, or pass reward_fn to the Trainer; or "
                         "unset eval.path.")
    if examples is None:
        examples = read(exp, exp.data.path, tok, t_tok)
    held_out = None
    if exp.eval.path:
        held_out = read(exp, exp.eval.path, tok, t_tok)
        held_out = held_out[:exp.eval.limit] if exp.eval.limit else held_out
    return Text(exp, tok, t_tok, examples, held_out, fn, environment(exp, env, tok, fn))
