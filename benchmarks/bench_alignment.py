"""What a teacher with its own tokenizer costs on the host, beside the teacher's own scoring.

    python benchmarks/bench_alignment.py                     # 16 rows x 512 tokens, the 100m teacher
    python benchmarks/bench_alignment.py --rows 64 --tokens 1024 --config tiny
    python benchmarks/bench_alignment.py --smoke

Each on-policy step of ``teacher.kind=cross_tokenizer`` decodes the student's completions, encodes
them again with the teacher's tokenizer and finds the spans both tokenizations share
(``opd_jax.teachers.spans.align_many``), then spreads the teacher's span log-probs back (``spread``),
or for ``objective=simct`` gathers its top-k shared tokens at each span start
(``opd_jax.teachers.virtual.virtual_extras``). All of it runs on the host, in Python and the
tokenizers' Rust backend, while the teacher's forward runs in XLA. This benchmark times, per batch
and alternating (A B A B, medians over rounds):

- ``align, text cuts``: ``align_many(cuts="text")``;
- ``align, consistent cuts``: ``align_many(cuts="consistent")`` with each side's continuation cache
  kept across rounds, as a run keeps it (the first round fills it and is reported on its own);
- ``spread`` and ``simct extras`` (given the teacher's scores);
- ``teacher forward``: the teacher model's log-probs of its own tokens for the same rows
  (``opd_jax.teachers.local.sequence_logp``, compiled beforehand; random weights of the
  ``--config`` shape with the teacher tokenizer's vocabulary).

The two tokenizers are byte-level BPEs trained here, on the same synthetic text (words, numbers,
operators, spaces and new lines), to different vocabulary sizes (``--student-vocab``,
``--teacher-vocab``): their merges cut the text in different places, as two model families' do.
Nothing is downloaded. The peer of the host cost is the teacher forward it accompanies: the ratio
says what fraction of a step's teacher time the alignment adds (the two do not overlap today).
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import CONFIGS, alternate, command_line, print_rounds  # noqa: E402

WORDS = ("the", "of", "and", "number", "sum", "product", "answer", "is", "then", "so", "we", "add",
         "multiply", "each", "total", "apples", "boxes", "remaining", "after", "minutes", "value")


def synthetic_text(rng, words: int) -> str:
    out = []
    for _ in range(words):
        r = rng.random()
        if r < 0.25:
            out.append(str(int(rng.integers(0, 10 ** int(rng.integers(1, 6))))))
        elif r < 0.35:
            out.append(str(rng.choice(list("+-*/=()"))))
        else:
            out.append(str(rng.choice(WORDS)))
        out.append("\n" if rng.random() < 0.05 else " ")
    return "".join(out)


def bpe(corpus: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=512, help="student tokens per completion")
    parser.add_argument("--config", default="100m", choices=sorted(CONFIGS))
    parser.add_argument("--student-vocab", type=int, default=8192)
    parser.add_argument("--teacher-vocab", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 2 rounds (the test suite's)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.tokens, args.config, args.rounds = 2, 32, "tiny", 2
        args.student_vocab, args.teacher_vocab = 400, 600
    from opd_jax.models import Transformer
    from opd_jax.models.config import ModelConfig
    from opd_jax.teachers import spans as S
    from opd_jax.teachers import virtual as VT
    from opd_jax.teachers.local import sequence_logp
    from opd_jax.training.batches import join
    from flax import nnx

    rng = np.random.default_rng(0)
    corpus = [synthetic_text(rng, 200) for _ in range(2000 if not args.smoke else 100)]
    s_tok, t_tok = bpe(corpus, args.student_vocab), bpe(corpus[::-1], args.teacher_vocab)
    rows = []
    while len(rows) < args.rows:
        ids = s_tok(synthetic_text(rng, 4 * args.tokens), add_special_tokens=False)["input_ids"]
        rows.append(ids[:args.tokens - 1] + [s_tok.eos_token_id])
    eos = [True] * len(rows)
    ext = (S.Extensions(s_tok), S.Extensions(t_tok))
    cold = alternate({"consistent": lambda: S.align_many(s_tok, t_tok, rows, eos, t_tok.eos_token_id,
                                                          extensions=ext)}, 1)["consistent"][0]
    aligned = S.align_many(s_tok, t_tok, rows, eos, t_tok.eos_token_id, extensions=ext)
    nt = max(len(a["teacher_ids"]) for a in aligned)
    t_ids = np.full((len(rows), nt), t_tok.eos_token_id, np.int32)
    t_span = np.full((len(rows), nt), -1, np.int64)
    s_span = np.stack([np.asarray(a["student_span"]) for a in aligned])
    for r, a in enumerate(aligned):
        t_ids[r, :len(a["teacher_ids"])], t_span[r, :len(a["teacher_span"])] = a["teacher_ids"], a["teacher_span"]
    t_mask = t_span >= 0

    hf = dict(CONFIGS[args.config], vocab_size=len(t_tok), model_type="qwen3",
              architectures=["Qwen3ForCausalLM"], max_position_embeddings=nt + 64)
    graphdef, params = nnx.split(Transformer(ModelConfig.from_hf(hf), rngs=nnx.Rngs(0)), nnx.Param)
    prompt = rng.integers(0, len(t_tok), (len(rows), 32)).astype(np.int32)
    seq = join(prompt, np.ones_like(prompt, bool), t_ids, t_mask)

    def forward():
        return jax.block_until_ready(sequence_logp(graphdef, params, seq, t_ids, t_mask, 1, 1.0, 256))
    logp = np.asarray(forward())  # compiles
    shared = VT.shared_vocabulary(s_tok, t_tok)
    k = min(64, len(shared[0]))
    top = np.sort(rng.normal(size=(len(rows), nt, k)), axis=-1)[..., ::-1].astype(np.float32) - 5
    where = rng.integers(0, len(shared[0]), (len(rows), nt, k))
    s_ids, student_logp = np.asarray(rows), np.full(s_span.shape, -1.0, np.float32)
    calls = {
        "align, text cuts": lambda: S.align_many(s_tok, t_tok, rows, eos, t_tok.eos_token_id, cuts="text"),
        "align, consistent cuts": lambda: S.align_many(s_tok, t_tok, rows, eos, t_tok.eos_token_id,
                                                        extensions=ext),
        "spread": lambda: S.spread(logp, t_span, s_span, student_logp),
        "simct extras": lambda: VT.virtual_extras(logp, top, where, t_span, s_span, t_ids, s_ids, shared),
        "teacher forward": forward,
    }
    times = alternate(calls, args.rounds)
    print(f"command: {command_line()}")
    print(f"jax {jax.__version__} ({jax.default_backend()}), {os.cpu_count()} CPUs; {len(rows)} rows x "
          f"{args.tokens} student tokens ({sum(map(len, rows)):,} in all, {int(t_mask.sum()):,} teacher tokens); "
          f"tokenizers: byte-level BPE {len(s_tok):,} (student) and {len(t_tok):,} (teacher), "
          f"{len(shared[0]):,} tokens shared; teacher {args.config}; medians of {args.rounds} alternating rounds")
    text = S.align_many(s_tok, t_tok, rows, eos, t_tok.eos_token_id, cuts="text")
    per_span = [np.mean([len(a["student_span"]) / a["spans"] for a in al]) for al in (text, aligned)]
    print(f"student tokens per span: {per_span[0]:.2f} (text cuts), {per_span[1]:.2f} (consistent cuts); "
          f"the first consistent-cut alignment (empty continuation caches): {cold:.3f} s")
    print_rounds(times, "teacher forward")

if __name__ == "__main__":
    main()
