"""Helpers of the real-model tests: the test suite's other helper modules (loaded by path, so
that they are shared, not copied), JSONL writing, and scripted fake models
(:class:`scripted_model.Scripted`, shared with the lab's tests)."""

import gzip
import importlib.util
import json
import sys
from pathlib import Path

from scripted_model import Scripted

TESTS = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


hf_reference = _load("hf_reference", TESTS / "models" / "hf_reference.py")
cli_helpers = _load("cli_helpers", TESTS / "training" / "cli_helpers.py")


def write_records(path, records, *, gz: bool = False) -> str:
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def script_model(tokenizer, text: str, after: str, end: int, vocab: int) -> Scripted:
    """A model that, after the character ``after``, writes ``text`` (distinct characters) then the
    token ``end``."""
    ids = tokenizer(after + text, add_special_tokens=False)["input_ids"]
    assert len(set(ids)) == len(ids), "the script's characters must be distinct"
    successor = dict(zip(ids, ids[1:]))
    successor[ids[-1]] = end
    return Scripted(vocab, successor, default=end)
