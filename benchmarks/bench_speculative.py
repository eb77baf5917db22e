"""Speculative sampling (``opd_jax.sampling.speculative``) against Hugging Face's assisted generation
(``generate(assistant_model=...)``, PyTorch), on the lab's weak model (2 x 128) drafting for its
teacher (4 x 256), greedy: the text is the teacher's own greedy text on both sides.

Four calls alternate (A B C D, ``--rounds`` rounds), each answering ``--problems`` lab prompts one
at a time (HF's assisted generation takes one row): ours plain (the teacher alone, ``sample``),
ours speculative, HF plain, HF assisted (``--draft-tokens`` per teacher forward, a constant
schedule, no confidence cut-off). A fifth line times ours on all prompts in one call (rows of a
batch accept different numbers of drafts; HF cannot batch this). The table gives medians of
answer tokens per second and the ratio to HF's assisted generation; tokens per teacher forward
(ours from the sampler's counts, HF's from a forward hook on its teacher); and whether each
side's text equals HF's plain greedy text.

    python benchmarks/bench_speculative.py                 # 32 problems, 4 draft tokens, 5 rounds
    python benchmarks/bench_speculative.py --smoke         # seconds: 2 problems, 1 round
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import alternate, command_line  # noqa: E402
from opd_jax.lab import countdown as C  # noqa: E402
from opd_jax.lab import data as L  # noqa: E402
from opd_jax.lab.tokenizer import EOS_ID, PAD_ID  # noqa: E402
from opd_jax.models import from_pretrained, load_tokenizer  # noqa: E402
from opd_jax.sampling import SamplerConfig, freeze, sample, speculative_sample  # noqa: E402

NEW_TOKENS = 32  # the lab's answers


def lab_prompts(tok, n: int) -> list[list[int]]:
    """``n`` countdown prompts (three numbers, a target) as token ids, fixed by the seed."""
    rng = np.random.default_rng(0)
    return [tok.encode(L.prompt(C.Problem(tuple(int(x) for x in rng.integers(1, 10, 3)), int(rng.integers(10, 100)))),
                       add_special_tokens=False) for _ in range(n)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--drafter", default="lab/models/weak")
    p.add_argument("--target", default="lab/models/teacher")
    p.add_argument("--problems", type=int, default=32)
    p.add_argument("--draft-tokens", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    if a.smoke:
        a.problems, a.rounds = 2, 1
    torch.set_num_threads(os.cpu_count() or 1)
    tok = load_tokenizer(a.target)
    ids = lab_prompts(tok, a.problems)
    width = max(map(len, ids))
    cfg = SamplerConfig(max_new_tokens=NEW_TOKENS, temperature=0.0, eos_ids=(EOS_ID,), pad_id=PAD_ID,
                        prompt_buckets=(width,), new_token_buckets=(NEW_TOKENS,))
    drafter = freeze(*nnx.split(from_pretrained(a.drafter), nnx.Param))
    target = freeze(*nnx.split(from_pretrained(a.target), nnx.Param))
    rows = [(np.array([x], np.int32), np.ones((1, len(x)), bool)) for x in ids]
    padded = np.full((len(ids), width), PAD_ID, np.int32)
    for i, x in enumerate(ids):
        padded[i, width - len(x):] = x
    batch_mask = padded != PAD_ID
    key = jax.random.key(0)
    hf_t = transformers.AutoModelForCausalLM.from_pretrained(a.target).eval()
    hf_d = transformers.AutoModelForCausalLM.from_pretrained(a.drafter).eval()
    gen = dict(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    hf_d.generation_config.num_assistant_tokens = a.draft_tokens
    hf_d.generation_config.num_assistant_tokens_schedule = "constant"
    hf_d.generation_config.assistant_confidence_threshold = 0.0

    def answer(tokens, mask, start):  # the completion up to and including EOS
        return [list(t[start:][m[start:]]) for t, m in zip(np.asarray(tokens), np.asarray(mask))]

    out, counts = {}, {}

    def ours_plain():
        out["ours plain"] = [answer(r.tokens, r.completion_mask, r.prompt_len)[0] for r in
                             (sample(*target, x, m, key, cfg=cfg) for x, m in rows)]

    def ours_spec():
        res = [speculative_sample(drafter, target, x, m, key, cfg=cfg, draft_tokens=a.draft_tokens) for x, m in rows]
        out["ours speculative"] = [answer(r.tokens, r.completion_mask, r.prompt_len)[0] for r, _ in res]
        counts["ours speculative"] = tuple(sum(int(getattr(s, f).sum()) for _, s in res) for f in ("emitted", "blocks"))

    def ours_batch():
        r, s = speculative_sample(drafter, target, padded, batch_mask, key, cfg=cfg, draft_tokens=a.draft_tokens)
        out["ours speculative, one batch"] = answer(r.tokens, r.completion_mask, r.prompt_len)
        counts["ours speculative, one batch"] = (int(s.emitted.sum()), int(s.blocks.sum()))

    def hf(name, **kw):
        def call():
            with torch.no_grad():
                out[name] = [hf_t.generate(torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long),
                                           **gen, **kw)[0, len(x):].tolist() for x in ids]
                out[name] = [t[:t.index(EOS_ID) + 1] if EOS_ID in t else t for t in out[name]]
        return call

    calls = {"ours plain": ours_plain, "ours speculative": ours_spec, "HF plain": hf("HF plain"),
             "HF assisted": hf("HF assisted", assistant_model=hf_d)}
    for call in list(calls.values()) + [ours_batch]:
        call()  # compile / warm up
    forwards = [0]
    hook = hf_t.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    calls["HF assisted"]()
    hook.remove()
    counts["HF assisted"] = (sum(map(len, out["HF assisted"])), forwards[0])
    times = alternate({**calls, "ours speculative, one batch": ours_batch}, a.rounds)

    print(f"\ncommand: {command_line()}")
    print(f"jax {jax.__version__} (cpu), torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
          f"{transformers.__version__}, {os.cpu_count()} CPUs; {a.drafter} drafting {a.draft_tokens} tokens for "
          f"{a.target}; {a.problems} lab prompts one at a time (the last line: in one batch), greedy, up to "
          f"{NEW_TOKENS} new tokens; medians of {a.rounds} alternating rounds\n")
    print("| call | s per call (rounds) | answer tokens/s | ratio to HF assisted | tokens per teacher forward "
          "| same text as HF plain |")
    print("|---|---|---|---|---|---|")
    ref = statistics.median(times["HF assisted"])
    for name, ts in times.items():
        med = statistics.median(ts)
        n = sum(map(len, out[name]))
        emitted, blocks = counts.get(name, (0, 0))
        per = f"{emitted / blocks:.2f}" if blocks else "1 (plain)"
        same = sum(x == y for x, y in zip(out[name], out["HF plain"]))
        print(f"| {name} | {med:.3f} ({', '.join(f'{t:.3f}' for t in ts)}) | {n / med:,.0f} | {ref / med:.2f} "
              f"| {per} | {same}/{len(ids)} |")


if __name__ == "__main__":
    main()
