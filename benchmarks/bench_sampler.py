"""Generation throughput of ``opd_jax.sampling.sample`` vs ``transformers`` ``generate`` (PyTorch, KV cache).

Same weights (the PyTorch model is saved and loaded with ``from_pretrained``), same left-padded
prompts, same CPU, one process. Both decode with no end-of-sequence token, so every row generates
exactly ``--new-tokens`` tokens; greedily by default, when the table also reports whether the two
produced the same tokens (``--temperature 1`` samples from the full softmax instead). Timed runs alternate ours / PyTorch (A B A B ...); the table gives medians in generated
tokens/s (batch x new tokens / wall time, prefill included) and their ratio (ours / PyTorch).

    python benchmarks/bench_sampler.py            # tiny and ~100M configs, batch 1, 8, 64, 128 new tokens
    python benchmarks/bench_sampler.py --smoke    # seconds: tiny config, batch 1 and 8, 16 new tokens

``--cpu-devices N`` (default: one per CPU core) also times ours with the rows split over N JAX CPU
devices (``jax_num_cpu_devices``, the sampler sharded over a ``data`` mesh axis), as
``python -m opd_jax.main --cpu-devices N`` runs: small models' decode steps are bound by per-op
costs that one device pays serially. PyTorch uses its default intra-op threads either way.

``--frozen`` also times ours on ``opd_jax.sampling.freeze``'s layout of the weights (per layer,
in the compute dtype, made once before the timed calls), as an evaluation or a served model
samples: no weight copies inside each call. It runs on one device in the same alternation
(A B C D ...), and a third table sets it beside the stacked layout and the peers.

``--dtype bfloat16`` runs both sides in bf16: our weights and products in bf16
(``from_pretrained(..., param_dtype="bfloat16")``), PyTorch's model cast with ``.to(bfloat16)``.
Greedy tokens then agree only until the two sides' bf16 roundings first pick different
arg-maxes, so the agreement columns measure that, not a fault (and ours split over devices
is not required to match ours on one). Our KV cache is what ``SamplerConfig`` keeps by default,
float32 on CPU (XLA:CPU would cast a bf16 cache to float32 for attention on every step; a
float32 cache is read as it is); ``--cache-dtype bfloat16`` asks for a bf16 one, and the header
names the cache's dtype when it is not the compute dtype. ``--peer-dtype float32`` keeps
PyTorch and Tunix in float32 while ours runs in ``--dtype``: a user's choice of setting per
framework, not a like-for-like comparison (the tables say which dtype each side ran in).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compare on the same CPU even where a GPU exists
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opd_jax import host_memory, process  # noqa: E402

if __name__ == "__main__":
    process.relaunch()  # under the host-memory policy's environment (opd_jax.host_memory), before JAX loads

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from opd_jax.models import count_params, from_pretrained  # noqa: E402
from opd_jax.sampling import SamplerConfig, freeze, sample  # noqa: E402
from opd_jax.sampling.sampler import cache_dtype_for  # noqa: E402
from opd_jax.sharding import make_mesh  # noqa: E402
from benchmarks import tunix_peer  # noqa: E402
from benchmarks.common import CONFIGS, command_line, PAD, prompts, time_call  # noqa: E402



def build(name: str, workdir: str, dtype: str = "float32"):
    """The PyTorch reference model and ours, holding identical weights (float32, or both cast
    to ``dtype``)."""
    cfg = transformers.AutoConfig.for_model("qwen3", **CONFIGS[name])
    torch.manual_seed(0)
    theirs = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    with torch.no_grad():  # HF's 0.02 init gives near-uniform logits, i.e. arg-max ties; widen it
        for pname, p in theirs.named_parameters():
            if "norm" not in pname:
                p.normal_(0.0, 0.08)
    path = os.path.join(workdir, name)
    theirs.save_pretrained(path)
    ours = from_pretrained(path, param_dtype=dtype)  # computes (and caches) in the same dtype
    return theirs.to(getattr(torch, dtype)), ours


def bench_one(theirs, ours, name, batch, prompt_len, new_tokens, reps, temperature, cpu_devices,
              tunix=None, cache_dtype=None, frozen=False) -> dict:
    tokens, mask = prompts(batch, prompt_len, CONFIGS[name]["vocab_size"])
    graphdef, params = nnx.split(ours, nnx.Param)
    cfg = SamplerConfig(max_new_tokens=new_tokens, temperature=temperature, pad_id=PAD,
                        prompt_buckets=(prompt_len,), new_token_buckets=(new_tokens,), cache_dtype=cache_dtype)
    key = jax.random.key(0)
    tokens_pt, mask_pt = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature else {}
    gen_cfg = transformers.GenerationConfig(max_new_tokens=new_tokens, pad_token_id=PAD, eos_token_id=None,
                                            use_cache=True, **(sampling or dict(do_sample=False)))
    out = {}
    split = max(d for d in range(1, cpu_devices + 1) if batch % d == 0)  # devices the rows split over
    meshes = {1: make_mesh(data=1), split: make_mesh(data=split)}
    weights = {d: jax.device_put(params, jax.sharding.NamedSharding(m, jax.sharding.PartitionSpec()))
               for d, m in meshes.items()}  # replicated on each mesh's devices
    models = {d: (graphdef, w) for d, w in weights.items()}
    if frozen:  # laid out once, before any timed call
        with jax.set_mesh(meshes[1]):
            freeze_s = time_call(lambda: models.update(frozen=jax.block_until_ready(freeze(graphdef, weights[1]))))

    def run_ours(devices=1):
        with jax.set_mesh(meshes[1 if devices == "frozen" else devices]):
            out[devices] = jax.block_until_ready(sample(*models[devices], tokens, mask, key, cfg=cfg))

    def run_theirs():
        with torch.no_grad():
            out["theirs"] = theirs.generate(input_ids=tokens_pt, attention_mask=mask_pt, generation_config=gen_cfg)

    def run_tunix():
        out["tunix"] = tunix(tokens, mask, temperature)

    # Warm-up: compiles ours (and Tunix's), warms PyTorch's allocator. The first calls are timed:
    # compile time is the first call minus the median of the timed calls.
    first_ours = time_call(run_ours)
    first_frozen = time_call(lambda: run_ours("frozen")) if frozen else None
    run_ours(split), run_theirs()
    first_tunix = time_call(run_tunix) if tunix else None
    assert out["theirs"].shape == out[1].tokens.shape, "both must generate exactly new_tokens tokens"
    # the split run must be the same computation: the same tokens (in float32; bf16 products
    # round differently at another per-device batch, and greedy decoding amplifies that)
    assert ours.cfg.dtype != "float32" or (np.asarray(out[1].tokens) == np.asarray(out[split].tokens)).all()
    ref = out["theirs"][:, prompt_len:].numpy()
    same = np.asarray(out[1].tokens)[:, prompt_len:] == ref
    times = {"a": [], "f": [], "s": [], "b": [], "t": []}
    for _ in range(reps):
        times["a"].append(time_call(run_ours))
        if frozen:
            times["f"].append(time_call(lambda: run_ours("frozen")))
        if split > 1:
            times["s"].append(time_call(lambda: run_ours(split)))
        times["b"].append(time_call(run_theirs))
        if tunix:
            times["t"].append(time_call(run_tunix))
    generated = batch * new_tokens
    med = {k: statistics.median(v) for k, v in times.items() if v}
    tps_a, tps_b = generated / med["a"], generated / med["b"]
    tps_s = generated / med["s"] if split > 1 else None
    greedy = temperature == 0
    row = dict(config=name, params=count_params(ours), batch=batch, ours=tps_a, torch=tps_b,
               ratio=tps_a / tps_b, split=split, ours_split=tps_s,
               ratio_split=None if tps_s is None else tps_s / tps_b,
               same_rows=f"{int(same.all(axis=1).sum())}/{batch}" if greedy else "-",
               same_tokens=f"{same.mean():.1%}" if greedy else "-",
               compile_ours=first_ours - med["a"], frozen=None, tunix=None)
    if frozen:
        # the frozen layout samples the same tokens in float32 (its prefill rounds differently in bf16)
        assert ours.cfg.dtype != "float32" or (np.asarray(out[1].tokens) == np.asarray(out["frozen"].tokens)).all()
        row.update(frozen=generated / med["f"], compile_frozen=first_frozen - med["f"], freeze_s=freeze_s)
    if tunix:
        # Rows where any side emitted the pad id are counted apart: Tunix masks that token out of
        # later attention, so its continuation there is not comparable.
        padded = tunix_peer.pad_rows(out["tunix"], PAD) | tunix_peer.pad_rows(ref, PAD)
        agree = (out["tunix"] == ref)[~padded]
        row.update(tunix=generated / med["t"], ratio_tunix=tps_a / (generated / med["t"]),
                   compile_tunix=first_tunix - med["t"], tunix_pad_rows=int(padded.sum()),
                   tunix_same_tokens=f"{agree.mean():.1%}" if greedy and agree.size else "-")
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run: tiny config, batch 1 and 8, "
                                                             "16 new tokens, 2 reps")
    parser.add_argument("--configs", default="tiny,100m", help=f"comma-separated subset of {sorted(CONFIGS)}")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); >0: sample")
    parser.add_argument("--cpu-devices", type=int, default=os.cpu_count() or 1,
                        help="also time ours with the rows split over this many JAX CPU devices "
                             "(default: one per core; 1 = off)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="weights and products of every side (ours only, with --peer-dtype); our KV "
                             "cache: see --cache-dtype")
    parser.add_argument("--peer-dtype", default=None, choices=("float32", "bfloat16"),
                        help="PyTorch's and Tunix's dtype when it differs from ours (default: --dtype), "
                             "e.g. ours in bfloat16 beside float32 peers")
    parser.add_argument("--cache-dtype", default=None, choices=("float32", "bfloat16"),
                        help="our KV cache's dtype (default: SamplerConfig's: float32 on CPU, else --dtype)")
    parser.add_argument("--no-tunix", action="store_true", help="leave out the Tunix peer columns")
    parser.add_argument("--frozen", action="store_true",
                        help="ours samples from opd_jax.sampling.freeze's per-layer layout, made once "
                             "before the timed calls (as an evaluated or served model would)")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="PyTorch intra-op threads (0: its default); on a busy machine 1 avoids "
                             "OpenMP spin-waiting that makes PyTorch look far slower than it is")
    args = parser.parse_args(argv)
    host_memory.keep_freed_memory()  # $OPD_JAX_HOST_MEMORY, before JAX's CPU client exists
    if args.cpu_devices < 1:
        parser.error(f"--cpu-devices must be >= 1, got {args.cpu_devices}")
    if args.cpu_devices > 1:  # before JAX creates its CPU client (nothing above touched a device)
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    names, batches = args.configs.split(","), [int(b) for b in args.batches.split(",")]
    prompt_len, new_tokens, reps = args.prompt_len, args.new_tokens, args.reps
    if args.smoke:
        names, batches, prompt_len, new_tokens, reps = ["tiny"], [1, 8], 16, 16, 2
    for n in names:
        if n not in CONFIGS:
            parser.error(f"unknown config {n!r}; known: {sorted(CONFIGS)}")

    no_tunix = "left out (--no-tunix)" if args.no_tunix else tunix_peer.available()
    if no_tunix:
        print(no_tunix)
    peer_dtype = args.peer_dtype or args.dtype
    rows, ran = [], set()  # ran: (our compute dtype, our KV cache's, PyTorch's), as the models hold them
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            theirs, ours = build(name, workdir, peer_dtype)
            if peer_dtype != args.dtype:  # the same float32 checkpoint, loaded in our dtype
                ours = from_pretrained(os.path.join(workdir, name), param_dtype=args.dtype)
            cache = cache_dtype_for(SamplerConfig(max_new_tokens=1, cache_dtype=args.cache_dtype),
                                    nnx.state(ours, nnx.Param)) or str(ours.cfg.dtype)
            ran.add((str(ours.cfg.dtype), cache, str(theirs.dtype).removeprefix("torch.")))
            tunix = None if no_tunix else tunix_peer.TunixSampler(
                os.path.join(workdir, name), CONFIGS[name], peer_dtype, PAD, prompt_len, new_tokens)
            for batch in batches:
                rows.append(bench_one(theirs, ours, name, batch, prompt_len, new_tokens, reps, args.temperature,
                                      args.cpu_devices, tunix, args.cache_dtype, args.frozen))

    print(f"\ncommand: {command_line()}")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
          f"{os.cpu_count()} CPUs; {'greedy' if args.temperature == 0 else f'temperature {args.temperature}'}, "
          f"prompts of {prompt_len // 2}..{prompt_len} tokens (left-padded), "
          f"{new_tokens} new tokens, medians of {reps} alternating runs; "
          + "; ".join(ours_dt + (f" (our KV cache {cache_dt})" if cache_dt != ours_dt else "")
                      + (f" (PyTorch and Tunix: {peer_dt})" if peer_dt != ours_dt else "")
                      for ours_dt, cache_dt, peer_dt in sorted(ran)) +
          f"; host memory: {host_memory.in_effect()}\n")
    print("| config | params | batch | opd_jax tok/s | PyTorch generate tok/s | ratio | opd_jax, rows split "
          "over CPU devices | ratio | same rows | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        split = "-" if r["ours_split"] is None else f"{r['ours_split']:,.0f} ({r['split']} devices)"
        ratio = "-" if r["ratio_split"] is None else f"{r['ratio_split']:.2f}"
        print(f"| {r['config']} | {r['params'] / 1e6:.1f}M | {r['batch']} | {r['ours']:,.0f} | {r['torch']:,.0f} "
              f"| {r['ratio']:.2f} | {split} | {ratio} | {r['same_rows']} | {r['same_tokens']} |")
    print("\nCompile time (first call minus the median call, seconds) and the JAX peer, Tunix "
          f"{tunix_peer.VERSION} (one device, its own sampler; {no_tunix or 'available'}):\n")
    print("| config | batch | opd_jax compile s | Tunix compile s | opd_jax tok/s | Tunix tok/s | opd_jax / Tunix "
          "| Tunix same tokens as PyTorch | rows emitting the pad id |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["tunix"] is not None
        print(f"| {r['config']} | {r['batch']} | {r['compile_ours']:.2f} | "
              + (f"{r['compile_tunix']:.2f} | {r['ours']:,.0f} | {r['tunix']:,.0f} | {r['ratio_tunix']:.2f} | "
                 f"{r['tunix_same_tokens']} | {r['tunix_pad_rows']}/{r['batch']} |" if t else
                 f"- | {r['ours']:,.0f} | - | - | - | - |"))

    if args.frozen:
        print_frozen(rows)


def print_frozen(rows) -> None:
    """The third table (``--frozen``): ours on freeze's layout beside ours on the stacked one."""
    print("\nOurs on opd_jax.sampling.freeze's per-layer layout (one device, timed in the same alternation; "
          "freeze s: laying it out, once, before the first call):\n")
    print("| config | batch | opd_jax tok/s | opd_jax frozen tok/s | frozen / stacked | frozen / PyTorch "
          "| frozen / Tunix | frozen compile s | freeze s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tunix = f"{r['frozen'] / r['tunix']:.2f}" if r["tunix"] else "-"
        print(f"| {r['config']} | {r['batch']} | {r['ours']:,.0f} | {r['frozen']:,.0f} | {r['frozen'] / r['ours']:.2f} "
              f"| {r['frozen'] / r['torch']:.2f} | {tunix} | {r['compile_frozen']:.2f} | {r['freeze_s']:.2f} |")


if __name__ == "__main__":
    main()
