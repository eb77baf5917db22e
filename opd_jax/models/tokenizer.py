"""What a checkpoint says about its text: end-of-sequence ids, chat templates, tokenizer identity.

- :func:`generation_eos_ids` reads every end-of-sequence id of a checkpoint's
  ``generation_config.json`` (Qwen3 lists two: ``<|im_end|>`` and ``<|endoftext|>``), falling
  back to its ``config.json``; :func:`default_eos_ids` adds the tokenizer's own EOS as a last
  resort. A sampler without these ids never stops a real model's completion.
- :func:`chat_ids` applies a tokenizer's own chat template with the generation prompt, passing
  template keyword arguments through (Qwen3's ``enable_thinking``).
- :func:`first_difference` / :func:`check_same_tokenizer`: on-policy distillation scores the
  student's tokens with the teacher, so both must map ids to the same tokens; the error names the
  first id where they differ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from opd_jax.models.hf_io import resolve_checkpoint_dir


class TokenizerMismatch(ValueError):
    """Two tokenizers that must be the same map some id to different tokens."""


def _ids(value) -> tuple[int, ...]:
    """An ``eos_token_id`` entry (an int, a list of ints or null) as a tuple."""
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"eos_token_id must be a non-negative int or a list of them, got {value!r}")
    return tuple(dict.fromkeys(values))  # unique, in the file's order


def generation_eos_ids(path: str | os.PathLike, *, local_files_only: bool = True,
                       cache_dir: str | None = None) -> tuple[int, ...]:
    """Every end-of-sequence id the checkpoint at ``path`` declares: ``generation_config.json``'s
    ``eos_token_id`` (all of them, in order), else ``config.json``'s, else ``()``."""
    directory = resolve_checkpoint_dir(path, local_files_only=local_files_only, cache_dir=cache_dir)
    for name in ("generation_config.json", "config.json"):
        file = os.path.join(directory, name)
        if not os.path.exists(file):
            continue
        with open(file) as f:
            try:
                ids = _ids(json.load(f).get("eos_token_id"))
            except ValueError as e:
                raise ValueError(f"{file}: {e}") from e
        if ids:
            return ids
    return ()


def default_eos_ids(path: str | os.PathLike | None, tokenizer=None, configured: Sequence[int] = ()
                    ) -> tuple[int, ...]:
    """The end-of-sequence ids to sample with: ``configured`` if any were given; else the
    checkpoint's (:func:`generation_eos_ids`); else the tokenizer's ``eos_token_id``; else ``()``."""
    if configured:
        return tuple(configured)
    ids = generation_eos_ids(path) if path else ()
    if not ids and tokenizer is not None and tokenizer.eos_token_id is not None:
        ids = (int(tokenizer.eos_token_id),)
    return ids


def chat_ids(tokenizer, messages: Sequence[Mapping], *, add_generation_prompt: bool = True,
             template_kwargs: Mapping | None = None) -> list[int]:
    """``messages`` rendered by the tokenizer's own chat template and tokenized, ending with the
    generation prompt (the assistant's turn opened) by default."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer ({getattr(tokenizer, 'name_or_path', '?')}) has no chat "
                         "template; store token ids, give text prompts without data.chat_template, "
                         "or use a tokenizer that has one")
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt,
                                        tokenize=True, **dict(template_kwargs or {}))
    if isinstance(ids, Mapping) or hasattr(ids, "input_ids"):  # a BatchEncoding
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def first_difference(a, b) -> tuple[int, str | None, str | None] | None:
    """The first id (smallest) that tokenizers ``a`` and ``b`` map to different tokens, with both
    tokens (None where one has no such id); None if their vocabularies are the same."""
    ta = {i: t for t, i in a.get_vocab().items()}
    tb = {i: t for t, i in b.get_vocab().items()}
    for i in sorted(set(ta) | set(tb)):
        if ta.get(i) != tb.get(i):
            return i, ta.get(i), tb.get(i)
    return None


def check_same_tokenizer(student, teacher, *, student_name: str = "student",
                         teacher_name: str = "teacher") -> None:
    """Raise :class:`TokenizerMismatch` naming the first differing token unless ``student`` and
    ``teacher`` map every id to the same token."""
    diff = first_difference(student, teacher)
    if diff is None:
        return
    i, s, t = diff
    show = lambda tok: "no token" if tok is None else repr(tok)  # noqa: E731
    raise TokenizerMismatch(
        f"the {student_name} and {teacher_name} tokenizers differ: id {i} is {show(s)} for the "
        f"{student_name} but {show(t)} for the {teacher_name}; on-policy distillation scores the "
        "student's tokens with the teacher, so both must use one tokenizer (cross-tokenizer "
        "distillation is not supported).")


def tokenizer_of(path: str | os.PathLike | None):
    """The tokenizer stored with the checkpoint at ``path`` (local directory or repo id in the local
    HF cache), or None if there is no path or the checkpoint carries no tokenizer files."""
    from opd_jax.models.hf_io import has_tokenizer, load_tokenizer
    if not path or not has_tokenizer(path):
        return None
    return load_tokenizer(path)
