"""Prompt data: JSONL (optionally ``.jsonl.gz``) or Parquet records, read in a seeded order that
depends only on a cursor.

Each record is a JSON object whose prompt is one of (first found wins):

- ``"prompt_ids"``: token ids;
- ``"messages"``: a chat, ``[{"role": "system" | "user" | "assistant", "content": text}, ...]``,
  rendered by the tokenizer's own chat template with the generation prompt (template keyword
  arguments such as Qwen3's ``enable_thinking`` pass through). A trailing assistant turn is the
  record's reference completion, the turns before it the prompt;
- ``"prompt"``: text, tokenized as the tokenizer does by default (a Llama tokenizer adds its BOS
  token), or, with ``chat_template=True``, as one user turn through the chat template.

Optional fields: a privileged context for the teacher (self-distillation),
``"teacher_prompt_ids"`` / ``"teacher_messages"`` / ``"teacher_prompt"``, read the same way
through the *teacher's* tokenizer and template; a reference completion (off-policy data for GKD
and SFT), ``"completion_ids"`` or ``"completion"`` (text, tokenized without special tokens and
ended with the EOS token); ``"answer"`` (for a verifier's reward); the environment's turns of a
multi-turn episode, ``"env_turns_ids"`` (a list of non-empty id lists: what follows the student's
first, second, ... turn; read by ``loop.turns``) or ``"env_turns"`` (text user messages, or
``{"role": "user" | "tool", "content": text}`` turns, of a chat-template prompt: each rendered as
what the template writes between an assistant turn's end-of-turn token, which the student
samples, and the next assistant turn's first token); the extra teacher contexts of
UniSD, ``"aux_teacher_prompts_ids"`` (a list of id lists) and ``"bad_teacher_prompt_ids"``,
checked like prompts; and anything else, kept as-is in ``Example.record``.

The order is a fresh permutation per epoch, seeded by ``(shuffle_seed, epoch)``; the ``c``-th
prompt ever consumed is ``perm[c // n][c % n]``. A run's whole data position is therefore one
integer (the cursor), which the train state carries and checkpoints save. Each host takes its
own contiguous slice of every global batch.
"""

import dataclasses
import gzip
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np


class DataError(ValueError):
    """A data file is missing, empty or malformed; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Example:
    prompt_ids: tuple[int, ...]
    teacher_prompt_ids: tuple[int, ...] | None = None
    completion_ids: tuple[int, ...] | None = None
    answer: Any = None
    line: int = 0  # 1-based line (JSONL) or row (Parquet) in the source file
    record: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
    env_turns_ids: tuple[tuple[int, ...], ...] = ()  # the environment's turns (multi-turn episodes)


@dataclasses.dataclass(frozen=True)
class TextOptions:
    """How text fields become token ids.

    ``tokenizer`` reads the student's fields, ``teacher_tokenizer`` (default: ``tokenizer``) the
    teacher's context; ``chat_template`` wraps text prompts as a user turn of the template;
    ``template_kwargs`` go to the template; ``eos_id`` ends text completions (default: the
    tokenizer's ``eos_token_id``); ``system``: a system message put first in every chat that has
    none (prompts, teacher contexts, environment turns); a prompt that is not a chat (token ids,
    plain text) is then an error.
    """
    tokenizer: Any = None
    teacher_tokenizer: Any = None
    chat_template: bool = False
    template_kwargs: Mapping | None = None
    eos_id: int | None = None
    system: str = ""

    @classmethod
    def of(cls, data, tokenizer, teacher_tokenizer=None) -> "TextOptions":
        """The options a run's data config (``chat_template``, ``chat_template_kwargs``,
        ``system_prompt``) gives."""
        return cls(tokenizer, teacher_tokenizer, data.chat_template, data.chat_template_kwargs,
                   system=data.system_prompt)


# Extra teacher contexts the objectives read from the record (see opd_jax.training.loop).
CONTEXT_FIELDS = ("aux_teacher_prompts_ids", "bad_teacher_prompt_ids")
_ROLES = ("system", "user", "assistant", "tool")


def _records(path: str):
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from e
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({e})") from e
        yield from enumerate(rows, start=1)
        return
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for i, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: invalid JSON ({e.msg} at column {e.colno})") from e
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{i}: each line must be a JSON object, got "
                                    f"{type(record).__name__}")
                yield i, record
    except (OSError, EOFError, UnicodeDecodeError) as e:  # a damaged gzip stream, bad bytes
        raise DataError(f"{path}: cannot be read as {'gzipped ' if opener is gzip.open else ''}"
                        f"UTF-8 JSONL ({e})") from e


def check_ids(ids, where: str, name: str, vocab_size: int | None = None) -> tuple[int, ...]:
    """``ids`` as a tuple if it is a list of non-negative ints below ``vocab_size`` (booleans,
    which JSON writes as ``true``/``false`` and Python counts as ints, are refused)."""
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool)
                                            and t >= 0 for t in ids):
        raise DataError(f"{where}: {name} must be a list of non-negative ints (token ids), got "
                        f"{str(ids)[:80]}")
    if ids and vocab_size is not None and max(ids) >= vocab_size:
        raise DataError(f"{where}: {name} has token id {max(ids)} >= vocab_size {vocab_size}")
    return tuple(ids)


def _check_messages(messages, where: str, name: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: {name} must be a non-empty list of {{'role', 'content'}} turns")
    for j, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") in _ROLES
                and isinstance(m.get("content"), str)):
            raise DataError(f"{where}: {name}[{j}] must be {{'role': one of {list(_ROLES)}, "
                            f"'content': text}}, got {str(m)[:80]}")
    return messages


def _need(tokenizer, where: str, key: str):
    if tokenizer is None:
        raise DataError(f"{where}: {key} is text but no tokenizer was given; store {key}_ids, "
                        "give the model's tokenizer, or give a model checkpoint with tokenizer "
                        "files (student.path)")
    return tokenizer


def _chat(tokenizer, messages, where: str, opts: TextOptions) -> tuple[int, ...]:
    from opd_jax.models.tokenizer import chat_ids
    if opts.system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": opts.system}] + list(messages)
    try:
        return tuple(chat_ids(tokenizer, messages, template_kwargs=opts.template_kwargs))
    except ValueError as e:
        raise DataError(f"{where}: {e}") from e


def _prompt(record, prefix: str, tokenizer, where: str, opts: TextOptions):
    """The ids of ``{prefix}prompt_ids`` / ``{prefix}messages`` / ``{prefix}prompt``, the
    messages' trailing assistant turn (or None), or ``(None, None)`` if the record has none."""
    key = f"{prefix}prompt"
    plain = f"{key}_ids" in record or (key in record and f"{prefix}messages" not in record and not opts.chat_template)
    if opts.system and plain:
        raise DataError(f"{where}: a system prompt (data.system_prompt) goes into chats, but this "
                        f"record's {key} is {'token ids' if f'{key}_ids' in record else 'plain text'}; "
                        "give it as messages (or text with data.chat_template on), or unset the system prompt")
    if f"{key}_ids" in record:
        return check_ids(record[f"{key}_ids"], where, f"{key}_ids"), None
    if f"{prefix}messages" in record:
        msgs = _check_messages(record[f"{prefix}messages"], where, f"{prefix}messages")
        last = None
        if msgs[-1]["role"] == "assistant":
            if prefix:
                raise DataError(f"{where}: {prefix}messages ends with an assistant turn; the "
                                "teacher's context ends where the student's completion begins")
            msgs, last = msgs[:-1], msgs[-1]["content"]
            if not msgs:
                raise DataError(f"{where}: messages holds only an assistant turn; no prompt")
        return _chat(_need(tokenizer, where, f"{prefix}messages"), msgs, where, opts), last
    if key in record:
        text = record[key]
        if not isinstance(text, str):
            raise DataError(f"{where}: {key} must be a string, got {type(text).__name__}")
        tok = _need(tokenizer, where, key)
        if opts.chat_template:
            return _chat(tok, [{"role": "user", "content": text}], where, opts), None
        return tuple(int(t) for t in tok(text)["input_ids"]), None
    return None, None


def teacher_context_ids(record: dict, opts: TextOptions, where: str) -> tuple[int, ...]:
    """The token ids of ``record``'s teacher context (``teacher_prompt_ids``, ``teacher_messages``
    or ``teacher_prompt``), read as :func:`load_examples` reads it; for a context built during a run."""
    tok = opts.teacher_tokenizer if opts.teacher_tokenizer is not None else opts.tokenizer
    ids, _ = _prompt(record, "teacher_", tok, where, opts)
    if ids is None:
        raise DataError(f"{where}: no teacher context (teacher_prompt, teacher_messages or "
                        "teacher_prompt_ids)")
    return ids


def _completion(record, chat_completion, where: str, opts: TextOptions):
    if "completion_ids" in record:
        return check_ids(record["completion_ids"], where, "completion_ids")
    if "completion" in record and chat_completion is not None:
        raise DataError(f"{where}: both `completion` and a trailing assistant turn in `messages`; "
                        "keep one reference completion")
    text = record.get("completion", chat_completion)
    if text is None:
        return None
    if not isinstance(text, str):
        raise DataError(f"{where}: completion must be a string, got {type(text).__name__}")
    tok = _need(opts.tokenizer, where, "completion")
    eos = opts.eos_id if opts.eos_id is not None else tok.eos_token_id
    if eos is None:
        raise DataError(f"{where}: a text completion ends with the EOS token, but the tokenizer "
                        "has none; give the EOS id (eos_id) or store completion_ids")
    ids = [int(t) for t in tok(text, add_special_tokens=False)["input_ids"]]
    return tuple(ids if ids and ids[-1] == eos else ids + [int(eos)])


def _contexts(record, where: str, max_len: int, vocab_size) -> None:
    """UniSD's extra teacher contexts: each must be a valid, non-empty prompt."""
    aux = record.get("aux_teacher_prompts_ids")
    if aux is not None:
        if not isinstance(aux, list) or not aux:
            raise DataError(f"{where}: aux_teacher_prompts_ids must be a non-empty list of token-id "
                            "lists (one per auxiliary context)")
        for j, ids in enumerate(aux):
            _check_prompt(check_ids(ids, where, f"aux_teacher_prompts_ids[{j}]", vocab_size),
                          where, f"aux_teacher_prompts_ids[{j}]", max_len)
    if "bad_teacher_prompt_ids" in record:
        ids = check_ids(record["bad_teacher_prompt_ids"], where, "bad_teacher_prompt_ids", vocab_size)
        _check_prompt(ids, where, "bad_teacher_prompt_ids", max_len)


def _chat_base(record, where: str, opts: TextOptions) -> list[dict]:
    """The record's prompt as chat messages, what environment turns continue."""
    if "messages" in record:
        base = _check_messages(record["messages"], where, "messages")
        return base[:-1] if base[-1]["role"] == "assistant" else base
    if opts.chat_template and isinstance(record.get("prompt"), str):
        return [{"role": "user", "content": record["prompt"]}]
    raise DataError(f"{where}: environment turns in text are rendered by the chat template: give the "
                    "prompt as messages (or a text prompt with the chat template on), or give the "
                    "environment's turns as token ids")


def render_turn(record: dict, message, opts: TextOptions, where: str = "a record",
                name: str = "the environment's turn") -> tuple[int, ...]:
    """An environment's turn as token ids: ``message`` (text, a user message; or a role/content
    turn) as the chat template writes it after the student's end-of-turn token when the record's
    conversation goes on with it (the tokens after the EOS that closes an empty assistant turn,
    through the template's next generation prompt)."""
    base = _chat_base(record, where, opts)
    tok = _need(opts.tokenizer, where, "an environment turn")
    eos = opts.eos_id if opts.eos_id is not None else tok.eos_token_id
    msg = {"role": "user", "content": message} if isinstance(message, str) else message
    _check_messages([msg], where, name)
    head = len(_chat(tok, base, where, opts))
    full = list(_chat(tok, base + [{"role": "assistant", "content": ""}, msg], where, opts))
    if eos not in full[head:]:
        raise DataError(f"{where}: the chat template closes no assistant turn with the EOS token "
                        f"({eos}) before {name}; give the environment's turns as token ids")
    return tuple(full[full.index(eos, head) + 1:])


def _env_text(record, where: str, opts: TextOptions) -> list[list[int]]:
    """``env_turns`` rendered through the chat template (:func:`render_turn`)."""
    turns = record["env_turns"]
    if not isinstance(turns, list):
        raise DataError(f"{where}: env_turns must be a list of messages (text or role/content turns)")
    return [list(render_turn(record, turn, opts, where, f"env_turns[{j}]")) for j, turn in enumerate(turns)]


def _env_turns(record, where: str, vocab_size, opts: TextOptions) -> tuple[tuple[int, ...], ...]:
    if "env_turns" in record and "env_turns_ids" in record:
        raise DataError(f"{where}: both env_turns and env_turns_ids; keep one")
    turns = _env_text(record, where, opts) if "env_turns" in record else record.get("env_turns_ids", [])
    if not isinstance(turns, list):
        raise DataError(f"{where}: env_turns_ids must be a list of token-id lists (one per "
                        "environment turn)")
    out = tuple(check_ids(t, where, f"env_turns_ids[{j}]", vocab_size) for j, t in enumerate(turns))
    if any(not t for t in out):
        raise DataError(f"{where}: env_turns_ids holds an empty turn")
    return out


def _check_prompt(ids, where: str, name: str, max_len: int):
    if not ids:
        raise DataError(f"{where}: the {name} is empty")
    if len(ids) > max_len:
        raise DataError(f"{where}: the {name} has {len(ids)} tokens, more than "
                        f"data.max_prompt_len={max_len}; shorten it or raise the limit")


def load_examples(path: str, *, tokenizer=None, max_prompt_len: int, vocab_size: int | None = None,
                  chat_template: bool = False, teacher_tokenizer=None,
                  template_kwargs: Mapping | None = None, eos_id: int | None = None,
                  system_prompt: str = "") -> list[Example]:
    """Read and validate every record (see the module docstring); errors name the file and line.

    ``vocab_size`` (the model's) bounds every token id. The other keywords are those of
    :class:`TextOptions` (``system_prompt`` its ``system``).
    """
    if not path:
        raise DataError("no data path given (set data.path)")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such data file")
    opts = TextOptions(tokenizer, teacher_tokenizer, chat_template, template_kwargs, eos_id, system_prompt)
    t_tok = teacher_tokenizer if teacher_tokenizer is not None else tokenizer
    out = []
    for line, record in _records(path):
        where = f"{path}:{line}"
        prompt, chat_completion = _prompt(record, "", tokenizer, where, opts)
        if prompt is None:
            raise DataError(f"{where}: no 'prompt' or 'prompt_ids' field (nor 'messages'; fields: "
                            f"{sorted(record)})")
        _check_prompt(prompt, where, "prompt", max_prompt_len)
        teacher, _ = _prompt(record, "teacher_", t_tok, where, opts)
        if teacher is not None:
            _check_prompt(teacher, where, "teacher prompt", max_prompt_len)
        _contexts(record, where, max_prompt_len, vocab_size)
        completion = _completion(record, chat_completion, where, opts)
        for name, ids in (("prompt", prompt), ("teacher_prompt", teacher),
                          ("completion", completion)):
            if ids and vocab_size is not None and max(ids) >= vocab_size:
                raise DataError(f"{where}: {name} has token id {max(ids)} >= vocab_size {vocab_size}")
        out.append(Example(prompt, teacher, completion, record.get("answer"), line, record,
                           _env_turns(record, where, vocab_size, opts)))
    if not out:
        raise DataError(f"{path}: the file holds no records")
    return out


def order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``n`` examples used in ``epoch``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def global_indices(n: int, seed: int, cursor: int, count: int) -> np.ndarray:
    """Indices of the ``count`` examples after the first ``cursor`` consumed ones."""
    pos = cursor + np.arange(count, dtype=np.int64)
    idx = np.empty(count, np.int64)
    for epoch in np.unique(pos // n):  # one permutation per epoch the batch touches
        here = pos // n == epoch
        idx[here] = order(n, seed, int(epoch))[pos[here] % n]
    return idx


def host_slice(count: int, process_index: int, process_count: int) -> slice:
    """This host's contiguous part of a global batch of ``count`` rows."""
    if count % process_count:
        raise ValueError(f"a global batch of {count} cannot be split over {process_count} hosts")
    per = count // process_count
    return slice(process_index * per, (process_index + 1) * per)


def left_pad(seqs: list[tuple[int, ...]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``int32 [B, length]`` tokens and ``bool`` mask, each row right-aligned (left padding)."""
    tokens = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), bool)
    for i, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"row {i} has {len(s)} tokens, more than the padded length {length}")
        if s:
            tokens[i, length - len(s):] = s
            mask[i, length - len(s):] = True
    return tokens, mask


def right_pad(seqs: list[tuple[int, ...]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``int32 [B, length]`` and mask, each row left-aligned (completions), cut at ``length``."""
    tokens = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), bool)
    for i, s in enumerate(seqs):
        s = s[:length]
        tokens[i, :len(s)] = s
        mask[i, :len(s)] = True
    return tokens, mask


def template_kwargs(value) -> dict:
    """Chat-template keyword arguments from a mapping or a JSON object string (``""``: none), e.g.
    ``'{"enable_thinking": false}'``."""
    if not value:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"chat-template keyword arguments must be a JSON object, got {value!r} "
                            f"({e.msg})") from e
    if not isinstance(value, Mapping):
        raise DataError(f"chat-template keyword arguments must be a JSON object, got {value!r}")
    return dict(value)
