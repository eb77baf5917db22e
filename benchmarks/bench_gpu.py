"""GPU figures: the device's ceilings, the sampler against them and against PyTorch, and the MFU of
a full on-policy distillation iteration.

Run on a machine with a CUDA GPU (``pip install -e .`` with ``jax[cuda12]`` or ``jax[cuda13]``,
and a CUDA build of PyTorch for the generate comparison). Three parts, each printed as a table:

1. ``ceilings``: the device-memory bandwidth measured by an elementwise pass over 4 GiB (bytes
   read + written) and the bf16 matrix rate of an 8192^3 product, both through JAX. These are
   the denominators below (datasheet figures are printed beside them, not used).
2. ``sampler``: ``opd_jax.sampling.sample`` vs ``transformers`` ``generate`` (PyTorch on the same
   GPU, bf16, sdpa attention, KV cache on) on the same weights, greedy, no end-of-sequence token,
   so every row decodes exactly ``--new-tokens`` tokens; runs alternate ours / theirs and the
   table gives medians (prefill included). "bound" is the memory-bandwidth bound of decoding:
   each step must read every weight once and the KV cache of every row at its true length, so
   ``rows / ((weight bytes + mean KV bytes) / bandwidth)`` tokens/s; "% of bound" is a measured
   rate over it.
3. ``iteration``: ``Trainer.iteration()`` (sample, teacher score, update) with a random-init
   Qwen3-0.6B-shaped student (float32 master weights, bf16 compute) and a Qwen3-1.7B-shaped
   teacher (bf16), GKD's JSD loss; per-phase wall time, model FLOPs (opd_jax.training.flops) and
   MFU against the measured bf16 matrix rate.

    python benchmarks/bench_gpu.py                       # everything (~8 minutes on an H100)
    python benchmarks/bench_gpu.py --parts sampler       # one part
    python benchmarks/bench_gpu.py --smoke               # tiny sizes; runs on a CPU too

JAX takes 75% of the GPU's memory at start by default. The H100 figures in BENCHMARKS.md were
taken with XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 for the sampler part (PyTorch shares the GPU) and
0.92 for the iteration part; 32 prompts per iteration need ``--remat`` on an 80 GB card.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from benchmarks.common import CONFIGS as SAMPLER_CONFIGS, PAD, prompts, time_call  # noqa: E402

DATASHEET = {  # dense bf16 TFLOP/s and memory TB/s, for reference only
    "NVIDIA H100 80GB HBM3": (989.4, 3.35), "NVIDIA H200": (989.4, 4.8),
}


def median_time(fn, reps: int) -> float:
    return statistics.median(time_call(fn) for _ in range(reps))


# ---------------------------------------------------------------------------------- ceilings

def ceilings(smoke: bool) -> dict:
    n = (1 << 20) if smoke else (1 << 30)  # float32 elements: 4 GiB
    x = jax.random.normal(jax.random.key(0), (n,), jnp.float32)
    scale = jax.jit(lambda x: x * 1.0001 + 0.5)
    jax.block_until_ready(scale(x))
    t_copy = median_time(lambda: jax.block_until_ready(scale(x)), 10)
    bandwidth = 2 * 4 * n / t_copy  # bytes read + written
    m = 512 if smoke else 8192
    a = jax.random.normal(jax.random.key(1), (m, m), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(2), (m, m), jnp.bfloat16)
    mm = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(mm(a, b))
    reps = 20

    def run():
        out = None
        for _ in range(reps):  # dispatch is asynchronous: the products queue back to back
            out = mm(a, b)
        jax.block_until_ready(out)
    t_mm = median_time(run, 5) / reps
    del x
    return dict(bandwidth=bandwidth, matmul=2 * m ** 3 / t_mm)


# ----------------------------------------------------------------------------------- sampler

def weight_bytes(cfg) -> int:
    """Bytes a decode step must read: every parameter but the input embedding rows (a tied
    embedding is read whole as the LM head)."""
    from opd_jax.training.flops import body_flops, head_flops
    per_token_body = body_flops(cfg, 1, 0) / 2  # multiply-adds = weights of the matmuls
    per_token_head = head_flops(cfg, 1) / 2
    return int((per_token_body + per_token_head) * jnp.dtype(cfg.param_dtype).itemsize)


def kv_bytes(cfg, rows: int, context: float, itemsize: int) -> float:
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * rows * context * itemsize


def bench_sampler(names, batches, prompt_len, new_tokens, reps, workdir, bandwidth, peer=True) -> list[dict]:
    import torch
    import transformers
    from flax import nnx

    from opd_jax.models import count_params, from_pretrained
    from opd_jax.sampling import SamplerConfig, sample

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for name in names:
        hf_cfg = transformers.AutoConfig.for_model("qwen3", **SAMPLER_CONFIGS[name])
        torch.manual_seed(0)
        theirs = transformers.AutoModelForCausalLM.from_config(
            hf_cfg, attn_implementation="sdpa", dtype=torch.bfloat16).eval()
        with torch.no_grad():
            for pname, p in theirs.named_parameters():
                if "norm" not in pname:
                    p.normal_(0.0, 0.05)
        path = os.path.join(workdir, name)
        theirs.save_pretrained(path)
        theirs = theirs.to(dev)
        ours = from_pretrained(path, param_dtype="bfloat16")
        graphdef, params = nnx.split(ours, nnx.Param)
        cfg = ours.cfg
        for batch in batches:
            tokens, mask = prompts(batch, prompt_len, cfg.vocab_size)
            scfg = SamplerConfig(max_new_tokens=new_tokens, temperature=0.0, pad_id=PAD,
                                 prompt_buckets=(prompt_len,), new_token_buckets=(new_tokens,))
            t_tokens = torch.tensor(tokens, dtype=torch.long, device=dev)
            t_mask = torch.tensor(mask, dtype=torch.long, device=dev)
            gen = transformers.GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                pad_token_id=PAD, eos_token_id=None, use_cache=True,
                                                do_sample=False)

            def ours_run():
                jax.block_until_ready(sample(graphdef, params, tokens, mask, jax.random.key(0), cfg=scfg))

            def theirs_run():
                if not peer:
                    return
                with torch.no_grad():
                    out = theirs.generate(input_ids=t_tokens, attention_mask=t_mask, generation_config=gen)
                if dev == "cuda":
                    torch.cuda.synchronize()
                assert out.shape[1] == prompt_len + new_tokens

            compile_s = time_call(ours_run)
            theirs_run()
            ta, tb = [], []
            for _ in range(reps):
                ta.append(time_call(ours_run))
                tb.append(time_call(theirs_run))
            generated = batch * new_tokens
            a = generated / statistics.median(ta)
            b = generated / statistics.median(tb) if peer else float("nan")
            step_bytes = weight_bytes(cfg) + kv_bytes(cfg, batch, mask.sum(axis=1).mean() + new_tokens / 2, 2)
            bound = batch / (step_bytes / bandwidth)
            rows.append(dict(config=name, params=count_params(ours), batch=batch, ours=a, torch=b,
                             ratio=a / b, bound=bound, ours_frac=a / bound, torch_frac=b / bound,
                             compile_s=compile_s, step_mb=step_bytes / 1e6))
            print(json.dumps(rows[-1]), flush=True)
        del theirs
    return rows


# --------------------------------------------------------------------------------- iteration

def bench_iteration(smoke: bool, batch: int, prompt_len: int, new_tokens: int, reps: int, workdir: str,
                    peak: float, remat: bool) -> dict:
    import opd_jax.objectives as O
    from opd_jax.models import named_config, tiny_config
    from opd_jax.sampling import SamplerConfig
    from opd_jax.training.config import (DataConfig, Experiment, LoopConfig, MeshConfig, ModelSpec,
                                         OptimConfig, RunConfig, TeacherSpec)
    from opd_jax.training.loop import Trainer
    from opd_jax.training.step import StepConfig

    if smoke:
        s_cfg, t_cfg = tiny_config(), tiny_config(hidden_size=64)
    else:
        s_cfg, t_cfg = named_config("qwen3-0.6b"), named_config("qwen3-1.7b")
    vocab = s_cfg.vocab_size
    data = os.path.join(workdir, "prompts.jsonl")
    rng = np.random.default_rng(0)
    with open(data, "w") as f:
        for _ in range(batch * (reps + 2)):
            f.write(json.dumps({"prompt_ids": rng.integers(1, vocab, prompt_len).tolist()}) + "\n")
    exp = Experiment(
        student=ModelSpec(config=s_cfg, param_dtype="float32", dtype="bfloat16", remat=remat),
        teacher=TeacherSpec(kind="model", model=ModelSpec(config=t_cfg, param_dtype="bfloat16",
                                                          dtype="bfloat16", seed=1)),
        objective=O.GKDConfig(beta=0.5), loop=LoopConfig(lmbda=1.0),  # every step on-policy
        sampler=SamplerConfig(max_new_tokens=new_tokens, pad_id=0, eos_ids=(),
                              new_token_buckets=(new_tokens,), prompt_buckets=(prompt_len,)),
        optim=OptimConfig(lr=1e-6), step=StepConfig(chunk_size=256),
        mesh=MeshConfig(data=1), data=DataConfig(path=data, batch_size=batch),
        run=RunConfig(steps=10_000, workdir=os.path.join(workdir, "run"), progress=False,
                      tensorboard=False, diagnostics_k=0))
    trainer = Trainer(exp)
    compile_s = time_call(trainer.iteration)
    outs = [trainer.iteration() for _ in range(reps)]
    med = {k: statistics.median(o[k] for o in outs) for k in outs[0]}
    res = dict(batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, compile_s=compile_s, remat=remat)
    for phase in ("sample", "score", "update"):
        res[f"{phase}_s"] = med[f"time/{phase}"]
        res[f"{phase}_tflops"] = med[f"flops/{phase}"] / med[f"time/{phase}"] / 1e12
        res[f"{phase}_mfu"] = res[f"{phase}_tflops"] * 1e12 / peak
    total_flops = sum(med[f"flops/{p}"] for p in ("sample", "score", "update"))
    res["step_s"] = med["time/step"]
    res["mfu"] = total_flops / med["time/step"] / peak
    res["tokens_per_s"] = med["throughput/tokens_per_s"]
    print(json.dumps(res), flush=True)
    return res


# -------------------------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="ceilings,sampler,iteration")
    ap.add_argument("--configs", default="100m,0.6b", help=f"sampler models, from {sorted(SAMPLER_CONFIGS)}")
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--iter-batch", type=int, default=16, help="prompts per iteration")
    ap.add_argument("--iter-prompt-len", type=int, default=128)
    ap.add_argument("--iter-new-tokens", type=int, default=256)
    ap.add_argument("--remat", action="store_true", help="rematerialise the student's layers")
    ap.add_argument("--no-peer", action="store_true", help="skip PyTorch generate (sampler part)")
    ap.add_argument("--out", default="", help="also write the results as JSON here")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    parts = a.parts.split(",")
    names, batches = a.configs.split(","), [int(b) for b in a.batches.split(",")]
    if a.smoke:
        names, batches, a.new_tokens, a.reps = ["tiny"], [1, 4], 8, 1
        a.iter_batch, a.iter_prompt_len, a.iter_new_tokens = 2, 8, 8
    for n in names:
        if n not in SAMPLER_CONFIGS:
            ap.error(f"unknown config {n!r}; known: {sorted(SAMPLER_CONFIGS)}")
    device = jax.devices()[0]
    kind = getattr(device, "device_kind", device.platform)
    sheet = DATASHEET.get(kind)
    results = dict(device=kind, jax=jax.__version__, command=shlex.join(sys.argv))

    ceil = ceilings(a.smoke)
    results["ceilings"] = ceil
    with tempfile.TemporaryDirectory() as workdir:
        if "sampler" in parts:
            results["sampler"] = bench_sampler(names, batches, a.prompt_len, a.new_tokens, a.reps, workdir,
                                               ceil["bandwidth"], peer=not a.no_peer)
        if "iteration" in parts:
            results["iteration"] = bench_iteration(a.smoke, a.iter_batch, a.iter_prompt_len,
                                                   a.iter_new_tokens, a.reps, workdir, ceil["matmul"],
                                                   a.remat)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)

    print(f"\ncommand: python {results['command']}")
    print(f"device: {kind} ({device.platform}), jax {jax.__version__}")
    print("\n| ceiling | measured | datasheet |\n|---|---|---|")
    print(f"| memory bandwidth | {ceil['bandwidth'] / 1e12:.2f} TB/s | "
          f"{f'{sheet[1]:.2f} TB/s' if sheet else '-'} |")
    print(f"| bf16 matmul | {ceil['matmul'] / 1e12:.0f} TFLOP/s | {f'{sheet[0]:.0f} TFLOP/s' if sheet else '-'} |")
    if "sampler" in results:
        import torch
        print(f"\nsampler: greedy, bf16 weights and KV cache, prompts of {a.prompt_len // 2}..{a.prompt_len} "
              f"tokens, {a.new_tokens} new tokens, medians of {a.reps} alternating runs; "
              f"torch {torch.__version__}\n")
        print("| model | params | batch | opd_jax tok/s | PyTorch generate tok/s | ratio | bound tok/s "
              "| opd_jax % of bound | PyTorch % of bound | opd_jax compile s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in results["sampler"]:
            print(f"| {r['config']} | {r['params'] / 1e6:.0f}M | {r['batch']} | {r['ours']:,.0f} | "
                  f"{r['torch']:,.0f} | {r['ratio']:.1f} | {r['bound']:,.0f} | {100 * r['ours_frac']:.0f}% | "
                  f"{100 * r['torch_frac']:.0f}% | {r['compile_s']:.0f} |")
    if "iteration" in results:
        r = results["iteration"]
        print(f"\niteration: batch {r['batch']}, prompts {r['prompt_len']}, {r['new_tokens']} new tokens, "
              f"remat {r['remat']}; medians of {a.reps}; MFU against the measured bf16 rate "
              f"(compile + first iteration {r['compile_s']:.0f} s)\n")
        print("| phase | s | model TFLOP/s | MFU |\n|---|---|---|---|")
        for p in ("sample", "score", "update"):
            print(f"| {p} | {r[f'{p}_s']:.3f} | {r[f'{p}_tflops']:.1f} | {100 * r[f'{p}_mfu']:.1f}% |")
        print(f"| whole iteration | {r['step_s']:.3f} | - | {100 * r['mfu']:.1f}% |")


if __name__ == "__main__":
    main()
