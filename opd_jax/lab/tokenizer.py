"""The lab's tokenizer: one token per character, saved as a Hugging Face tokenizer directory.

The lab's models read and write the task's text through ``transformers.AutoTokenizer`` loaded from
that directory (``opd_jax.models.load_tokenizer``), the path a real checkpoint's tokenizer takes.
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


def save(path: str | os.PathLike) -> str:
    """Write the tokenizer to directory ``path`` (created); returns the path."""
    build().save_pretrained(os.fspath(path))
    return os.fspath(path)


def vocab_size() -> int:
    return len(SPECIALS) + len(CHARACTERS)
