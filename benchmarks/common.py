"""What the benchmarks share: the Hugging Face Qwen3 configurations they build (PyTorch side)
and load (ours), the left-padded prompts the sampler benchmarks feed both, and a wall-clock timer.

"100m": 12 layers x 768 wide, 32k vocabulary, tied embeddings: ~100M parameters. "0.6b": the
shape of Qwen3-0.6B (random weights; nothing is downloaded). Every config sets ``rope_theta``
1e6, Qwen3's own value and the one Tunix's model always uses (``benchmarks/tunix_peer.py``).
"""

import os
import shlex
import statistics
import sys
import time

import numpy as np

PAD = 0  # the padding token id of the sampler benchmarks
ROPE_THETA = 1_000_000.0

CONFIGS = {
    "tiny": dict(vocab_size=1024, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
    "100m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=4, head_dim=64, tie_word_embeddings=True),
    "0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
}
for _cfg in CONFIGS.values():
    _cfg["rope_theta"] = ROPE_THETA


def prompts(batch: int, length: int, vocab: int):
    """Left-padded prompts ``[batch, length]`` and their mask, lengths spread over [length / 2, length]."""
    rng = np.random.RandomState(batch)
    tokens = rng.randint(1, vocab, (batch, length)).astype(np.int32)
    lengths = np.linspace(length, max(length // 2, 1), batch).astype(int)
    mask = np.arange(length)[None, :] >= (length - lengths)[:, None]
    return np.where(mask, tokens, PAD).astype(np.int32), mask


def time_call(fn) -> float:
    """Seconds ``fn()`` takes (the caller blocks on asynchronous results inside ``fn``)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(calls: dict, rounds: int) -> dict:
    """``{key: [seconds of each round]}``: every call of ``calls`` once per round, in turn (A B A B),
    so that a drift of the machine's speed falls on all of them alike."""
    times = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            times[key].append(time_call(call))
    return times


def print_rounds(times: dict, reference: str, *, digits: int = 3) -> None:
    """A markdown table of ``alternate``'s rounds: each call's median seconds, its rounds and the
    median's ratio to ``reference``'s."""
    med = {key: statistics.median(v) for key, v in times.items()}
    print(f"\n| what | seconds per batch | rounds | / {reference} |")
    print("|---|---|---|---|")
    for key, v in times.items():
        print(f"| {key} | {med[key]:.3f} | {', '.join(f'{x:.3f}' for x in v)} | "
              f"{med[key] / med[reference]:.{digits}f} |")


def command_line() -> str:
    """How this benchmark was started, with the ``OPD_JAX_HOST_MEMORY`` it ran under if one was set."""
    policy = os.environ.get("OPD_JAX_HOST_MEMORY")
    return (f"OPD_JAX_HOST_MEMORY={shlex.quote(policy)} " if policy else "") + f"python {shlex.join(sys.argv)}"


def sizes(parser, args) -> tuple[list[str], int, int, int]:
    """``--configs``, ``--batch``, ``--seq`` and ``--reps`` of a train-step benchmark, or with
    ``--smoke`` the tiny config at 2 x 16 for 3 reps; an unknown config or no reps is a usage error."""
    if args.smoke:
        return ["tiny"], 2, 16, 3
    names = args.configs.split(",")
    for n in names:
        if n not in CONFIGS:
            parser.error(f"unknown config {n!r}; known: {sorted(CONFIGS)}")
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    return names, args.batch, args.seq, args.reps
