"""Prompt data: JSONL (or Parquet) records, read in a seeded order that depends only on a cursor.

Each record is a JSON object with either ``"prompt"`` (text, tokenized with the student's
tokenizer, optionally through its chat template) or ``"prompt_ids"`` (token ids). Optional
fields: ``"teacher_prompt"``/``"teacher_prompt_ids"`` (a privileged context for the teacher:
self-distillation), ``"completion"``/``"completion_ids"`` (a reference completion: off-policy
data for GKD and SFT), ``"answer"`` (for a verifier's reward), and anything else, kept as-is.

The order is a fresh permutation per epoch, seeded by ``(shuffle_seed, epoch)``; the ``c``-th
prompt ever consumed is ``perm[c // n][c % n]``. A run's whole data position is therefore one
integer (the cursor), which the train state carries and checkpoints save. Each host takes its
own contiguous slice of every global batch.
"""

import dataclasses
import json
import os
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
    with open(path, encoding="utf-8") as f:
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


def _ids(record, key, tokenizer, where, chat_template=False):
    if f"{key}_ids" in record:
        ids = record[f"{key}_ids"]
        if not isinstance(ids, list) or not all(isinstance(t, int) and t >= 0 for t in ids):
            raise DataError(f"{where}: {key}_ids must be a list of non-negative ints")
        return tuple(ids)
    if key in record:
        text = record[key]
        if not isinstance(text, str):
            raise DataError(f"{where}: {key} must be a string, got {type(text).__name__}")
        if tokenizer is None:
            raise DataError(f"{where}: {key} is text but no tokenizer was given; store "
                            f"{key}_ids or give the model's tokenizer")
        if chat_template and key != "completion":
            msgs = [{"role": "user", "content": text}]
            ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict):  # some tokenizers return a BatchEncoding
                ids = ids["input_ids"]
        else:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return tuple(int(t) for t in ids)
    return None


def load_examples(path: str, *, tokenizer=None, max_prompt_len: int, vocab_size: int | None = None,
                  chat_template: bool = False) -> list[Example]:
    """Read and validate every record; errors name the file and line."""
    if not path:
        raise DataError("no data path given (set data.path)")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such data file")
    out = []
    for line, record in _records(path):
        where = f"{path}:{line}"
        prompt = _ids(record, "prompt", tokenizer, where, chat_template)
        if prompt is None:
            raise DataError(f"{where}: no 'prompt' or 'prompt_ids' field (fields: {sorted(record)})")
        if not prompt:
            raise DataError(f"{where}: the prompt is empty")
        if len(prompt) > max_prompt_len:
            raise DataError(f"{where}: the prompt has {len(prompt)} tokens, more than "
                            f"data.max_prompt_len={max_prompt_len}; shorten it or raise the limit")
        teacher = _ids(record, "teacher_prompt", tokenizer, where, chat_template)
        completion = _ids(record, "completion", tokenizer, where)
        for name, ids in (("prompt", prompt), ("teacher_prompt", teacher), ("completion", completion)):
            if ids and vocab_size is not None and max(ids) >= vocab_size:
                raise DataError(f"{where}: {name} has token id {max(ids)} >= vocab_size {vocab_size}")
        out.append(Example(prompt, teacher, completion, record.get("answer"), line, record))
    if not out:
        raise DataError(f"{path}: the file holds no records")
    return out


def order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``n`` examples used in ``epoch``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def global_indices(n: int, seed: int, cursor: int, count: int) -> np.ndarray:
    """Indices of the ``count`` examples after the first ``cursor`` consumed ones."""
    idx = np.empty(count, np.int64)
    for i in range(count):
        c = cursor + i
        idx[i] = order(n, seed, c // n)[c % n]
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
