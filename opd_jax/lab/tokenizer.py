"""The lab's tokenizer: one token per character, saved as a Hugging Face tokenizer directory.

The lab's models read and write the task's text through ``transformers.AutoTokenizer`` loaded from
that directory (``opd_jax.models.load_tokenizer``), the path a real checkpoint's tokenizer takes.

:func:`build_numbers` is a second tokenizer for the same text, of another "model family": every
number from 10 to 999 is one token (longer numbers are read three digits at a time), everything
else one character, the special tokens at the same ids. A teacher trained with it cuts the text
elsewhere than the student (``"12+30=42"``: 5 tokens against 8), for the lab's cross-tokenizer
experiment.
"""

from __future__ import annotations

import os

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3
CHARACTERS = "0123456789+-*/=>:| abcdefghijklmnopqrstuvwxyz"
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)


def build():
    """A ``transformers`` fast tokenizer over ``CHARACTERS`` (any other character encodes as ``<unk>``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + tuple(CHARACTERS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # every character alone
    tok.decoder = decoders.Fuse()  # characters concatenate back, no separator
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


def build_numbers():
    """The numbers tokenizer of the module docstring (``<unk>`` for characters outside ``CHARACTERS``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    numbers = tuple(str(n) for n in range(10, 1000))
    vocab = {token: i for i, token in enumerate(SPECIALS + tuple(CHARACTERS) + numbers)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[1-9][0-9]{1,2}|."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


def save(path: str | os.PathLike) -> str:
    """Write the tokenizer to directory ``path`` (created); returns the path."""
    build().save_pretrained(os.fspath(path))
    return os.fspath(path)


def vocab_size(kind: str = "chars") -> int:
    """The vocabulary of the lab's tokenizer (``"chars"``) or of :func:`build_numbers`."""
    if kind not in ("chars", "numbers"):
        raise ValueError(f"unknown lab tokenizer {kind!r}; known: 'chars', 'numbers'")
    return len(SPECIALS) + len(CHARACTERS) + (990 if kind == "numbers" else 0)
