"""Memory and time of a full-vocabulary distillation loss + gradient: naive vs chunked vs fused.

The loss is GKD's generalized JSD (beta = 0.5), averaged over tokens, and its gradient with
respect to the student's final hidden states and LM-head weights (the teacher gets none), at
Qwen's vocabulary size. Variants:

- ``jax naive``    logits of student and teacher materialised (``h @ W``), features on [N, V];
- ``jax chunked``  logits materialised, the loss evaluated in blocks under ``jax.checkpoint``;
- ``jax fused``    no logits: each block's logits are computed from ``h`` and ``W`` (remat);
- ``jax one-pass`` fused, gradient computed in the forward pass (``fused_token_loss``);
- peers, same inputs, same process: TRL's ``GKDTrainer.generalized_jsd_loss`` (PyTorch
  autograd on materialised logits) and Liger-Kernel's ``LigerFusedLinearJSDLoss`` (chunked,
  pure PyTorch; ``pip install -r requirements-bench.txt``).

Memory of the JAX variants is XLA's compiled memory analysis at the full size (deterministic;
compiled, never run): ``temp`` is the working memory the loss adds, ``peak`` adds its arguments
and outputs (the weights and the gradient, equal for every variant). The naive losses of both
frameworks together do not fit a 24 GiB machine at 2048 tokens (TRL's alone keeps several
N x V float32 tensors for its backward), so times (and the check that every variant gives the
naive loss and gradients) are taken at ``--time-tokens`` (default 512), same V and D: medians of
runs that alternate the variants (A B C ... A B C ...).

    python benchmarks/bench_loss.py                 # memory at N=2048, time at N=512; V=151936, D=1024
    python benchmarks/bench_loss.py --smoke         # seconds
"""

import argparse
import os
import shlex
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import opd_jax.objectives as O  # noqa: E402

BETA = 0.5


def jax_variants(chunk: int):
    obj = O.build_objective(O.GKDConfig(beta=BETA))

    def loss(feats, mask):
        return jnp.sum(feats["jsd"]) / jnp.sum(mask)

    def naive(h, w, ht, wt, tok, mask):
        return loss(O.compute_features(obj.features, tokens=tok, mask=mask, logits=h @ w,
                                       teacher_logits=ht @ wt), mask)

    def chunked(h, w, ht, wt, tok, mask):
        return loss(O.compute_features(obj.features, tokens=tok, mask=mask, logits=h @ w,
                                       teacher_logits=ht @ wt, chunk_size=chunk), mask)

    def fused(h, w, ht, wt, tok, mask):
        return loss(O.compute_features(obj.features, tokens=tok, mask=mask, hidden=h, head=w,
                                       teacher_hidden=ht, teacher_head=wt, chunk_size=chunk), mask)

    def one_pass(h, w, ht, wt, tok, mask):
        value, _ = O.fused_token_loss(obj.token_loss, obj.features, tokens=tok, mask=mask,
                                      weights=mask / jnp.sum(mask), hidden=h, head=w,
                                      teacher_hidden=ht, teacher_head=wt, chunk_size=chunk)
        return value

    return {"jax naive": naive, "jax chunked": chunked, "jax fused": fused,
            "jax one-pass": one_pass}


def make_args(n, d, v):
    ks = jax.random.split(jax.random.key(0), 5)
    h = jax.random.normal(ks[0], (1, n, d), jnp.float32)
    w = jax.random.normal(ks[1], (d, v), jnp.float32) / np.sqrt(d)
    ht = jax.random.normal(ks[2], (1, n, d), jnp.float32)
    wt = jax.random.normal(ks[3], (d, v), jnp.float32) / np.sqrt(d)
    tok = jax.random.randint(ks[4], (1, n), 0, v)
    mask = jnp.ones((1, n), bool)
    return h, w, ht, wt, tok, mask


def compile_all(fns, args):
    """Compiled loss+gradient of each variant, with XLA's temp and peak bytes. ``args`` may be
    ``jax.ShapeDtypeStruct``s: nothing is allocated."""
    out = {}
    for name, fn in fns.items():
        compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
        m = compiled.memory_analysis()
        temp = m.temp_size_in_bytes
        peak = m.argument_size_in_bytes + m.output_size_in_bytes + temp - m.alias_size_in_bytes
        out[name] = (compiled, temp, peak)
    return out


def torch_variants(h, w, ht, wt, chunk):
    import torch
    from trl.experimental.gkd import GKDTrainer
    th = [torch.from_numpy(np.array(x)) for x in (h, w, ht, wt)]
    labels = torch.zeros((1, h.shape[1]), dtype=torch.long)  # all tokens count

    def trl_naive():
        hs = th[0][0].clone().requires_grad_(True)
        ws = th[1].clone().requires_grad_(True)
        with torch.no_grad():
            t_logits = th[2][0] @ th[3]
        loss = GKDTrainer.generalized_jsd_loss((hs @ ws)[None], t_logits[None], labels=labels,
                                               beta=BETA)
        loss.backward()
        return float(loss.detach()), hs.grad.numpy(), ws.grad.numpy()

    fns = {"torch TRL naive": trl_naive}
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    except ImportError:
        print("(liger-kernel not installed: pip install -r requirements-bench.txt)")
        return fns
    # Liger's student weight is [V, D] (nn.Linear layout); only the soft (JSD) loss counts.
    liger = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=BETA,
                                    chunk_size=chunk, compiled=False)

    def liger_fused():
        hs = th[0][0].clone().requires_grad_(True)
        ws = th[1].T.contiguous().requires_grad_(True)
        loss = liger(hs, ws, th[2][0], th[3].T.contiguous(), labels[0])
        loss.backward()
        return float(loss.detach()), hs.grad.numpy(), ws.grad.T.numpy()
    fns["torch Liger fused"] = liger_fused
    return fns


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--tokens", type=int, default=2048, help="memory analysis size")
    p.add_argument("--time-tokens", type=int, default=512, help="timed size (must fit in RAM)")
    p.add_argument("--chunk", type=int, default=256, help="positions per block")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--smoke", action="store_true", help="V=4096, D=64, N=256, 1 rep")
    a = p.parse_args()
    if a.smoke:
        a.vocab, a.hidden, a.tokens, a.time_tokens, a.reps, a.chunk = 4096, 64, 256, 256, 1, 64
    n, d, v = a.tokens, a.hidden, a.vocab
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"loss+grad of JSD(beta={BETA}), V={v}, D={d}, float32, block={a.chunk} positions: "
          f"memory at N={n} tokens (XLA analysis, not run), time at N={a.time_tokens}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    shapes = jax.eval_shape(lambda: make_args(n, d, v))
    memory = {k: (t, pk) for k, (_, t, pk) in compile_all(jax_variants(a.chunk), shapes).items()}
    args = h, w, ht, wt, tok, mask = make_args(a.time_tokens, d, v)
    compiled = compile_all(jax_variants(a.chunk), args)
    runners = {name: (lambda c=c: jax.block_until_ready(c(*args))) for name, (c, _, _) in compiled.items()}
    if not a.no_torch:
        import torch
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        runners |= torch_variants(h, w, ht, wt, a.chunk)

    # correctness first: every variant gives the same loss and gradients as jax naive
    ref = runners["jax naive"]()
    ref_loss, (ref_gh, ref_gw) = float(ref[0]), ref[1]
    check = {}
    for name, run in runners.items():
        out = run()
        if name.startswith("jax"):
            loss, (gh, gw) = float(out[0]), out[1]
        else:
            loss, gh, gw = out
        err = max(float(np.max(np.abs(np.reshape(gh, np.shape(ref_gh)) - ref_gh))),
                  float(np.max(np.abs(gw - ref_gw))))
        check[name] = (loss, err)
        del out

    times = {name: [] for name in runners}
    for _ in range(a.reps):
        for name, run in runners.items():
            t0 = time.perf_counter()
            out = run()
            times[name].append(time.perf_counter() - t0)
            del out

    base_t = statistics.median(times["jax naive"])
    base_temp, base_peak = memory["jax naive"]
    gib = 2.0 ** 30
    print()
    print(f"| variant | loss (N={a.time_tokens}) | max grad diff vs jax naive | temp GiB (N={n}) "
          f"| peak GiB (N={n}) | temp / naive | peak / naive | median s (N={a.time_tokens}) "
          "| time / naive |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in runners:
        loss, err = check[name]
        med = statistics.median(times[name])
        if name in memory:
            temp, peak = memory[name]
            mem = (f"{temp / gib:.2f} | {peak / gib:.2f} | {temp / base_temp:.1%} | "
                   f"{peak / base_peak:.1%}")
        else:
            mem = "n/a | n/a | n/a | n/a"
        print(f"| {name} | {loss:.6f} | {err:.1e} | {mem} | {med:.2f} | {med / base_t:.2f}x |")
    print(f"\nreps={a.reps}; runs alternate the variants; jax naive loss {ref_loss:.6f}")


if __name__ == "__main__":
    main()
