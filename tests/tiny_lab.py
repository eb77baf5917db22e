"""A lab small enough for tests: a data directory of a few easy problems and two one-layer
models, a teacher (width 32) and a weak student (width 16), exported with the lab's tokenizer."""

import os

from flax import nnx

from opd_jax.export import export
from opd_jax.lab import countdown as C
from opd_jax.lab import dataset
from opd_jax.lab import runner as R
from opd_jax.lab import tokenizer as T
from opd_jax.models import Transformer, load_tokenizer, tiny_config


def build(root) -> R.Lab:
    """The lab under ``root``: ``data/`` and the models ``teacher`` and ``weak``."""
    data = os.path.join(str(root), "data")
    dataset.build(data, difficulty=C.Difficulty(count=3, max_number=9, max_target=40), train=24, test=4)
    tok = load_tokenizer(os.path.join(data, "tokenizer"))
    models = {}
    for name, (width, seed) in {"teacher": (32, 1), "weak": (16, 2)}.items():
        cfg = tiny_config("llama", vocab_size=T.vocab_size(), hidden_size=width, intermediate_size=2 * width,
                          num_layers=1, num_heads=2, num_kv_heads=2, head_dim=width // 2)
        models[name] = export(Transformer(cfg, rngs=nnx.Rngs(seed)), os.path.join(str(root), name), tokenizer=tok)
    return R.Lab(data, models)
