"""The analytic FLOP counts agree with XLA's own count of the compiled program."""

import jax
import jax.numpy as jnp
from flax import nnx

from opd_jax.models import Transformer
from opd_jax.models.config import tiny_config
from opd_jax.training import flops as F


def test_body_flops_match_xla_cost_analysis():
    # One layer: XLA's cost analysis counts a scanned loop body once, so a single layer makes
    # its count the whole program's. Its count adds elementwise work (norms, softmax, RoPE) to
    # the matmuls, so it must be a little above ours and not far.
    cfg = tiny_config(vocab_size=64, hidden_size=128, intermediate_size=512, num_layers=1,
                      num_heads=4, num_kv_heads=2, head_dim=32)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    b, t = 2, 32
    tokens = jnp.zeros((b, t), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    fn = jax.jit(lambda p: nnx.merge(graphdef, p).hidden(tokens, positions)[0])
    cost = fn.lower(params).compile().cost_analysis()
    xla = (cost if isinstance(cost, dict) else cost[0])["flops"]
    ours = F.body_flops(cfg, b * t, t)
    assert ours <= xla <= 1.15 * ours, (ours, xla)


def test_head_and_phase_totals():
    cfg = tiny_config(vocab_size=100, hidden_size=16)
    assert F.head_flops(cfg, 3) == 3 * 2 * 16 * 100
    # an update is three forwards of the body plus the heads of the vocabulary phase
    u = F.update_flops(cfg, cfg, rows=2, seq_len=10, completion_len=4)
    assert u == 3 * F.body_flops(cfg, 20, 10) + 4 * F.head_flops(cfg, 8)


def test_shared_prompts_count_once_per_group():
    cfg = tiny_config(vocab_size=100, hidden_size=16)
    # 8 rows of 10 tokens, the last 4 their own: 2 groups of 4 run 2 prompts of 6 plus 8 x 4
    assert F.sequence_tokens(8, 10, 4, group=4) == 2 * 6 + 8 * 4
    assert F.sequence_tokens(8, 10, 4) == 80
    assert F.score_flops(cfg, 8, 10, 4, group=4) == F.body_flops(cfg, 44, 10)
    assert F.update_flops(cfg, None, 8, 10, 4, group=4) == (3 * F.body_flops(cfg, 44, 10)
                                                           + 3 * F.head_flops(cfg, 32))


def test_a_teacher_reading_a_context_per_row_counts_every_rows_prompt():
    cfg = tiny_config(vocab_size=100, hidden_size=16)
    kw = dict(source="on_policy", rows=8, seq_len=10, completion_len=4, teacher_len=12, prompts=2,
              prompt_len=6, decode_steps=4, teacher_mix=False, scored=True, group=4)
    shared, own = F.iteration_flops(cfg, [cfg], **kw), F.iteration_flops(cfg, [cfg], teacher_group=1, **kw)
    assert shared["flops/score"] == F.body_flops(cfg, 2 * 8 + 8 * 4, 12)
    assert own["flops/score"] == F.body_flops(cfg, 8 * 12, 12)
    assert own["flops/update"] == shared["flops/update"] and own["flops/sample"] == shared["flops/sample"]


def test_an_adapted_sampler_counts_the_fold_not_the_adapters_in_decode():
    from opd_jax.models import lora
    cfg = tiny_config(vocab_size=64, hidden_size=128, intermediate_size=256, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=32)
    adapted = cfg.replace(lora_rank=32, lora_targets=("q", "down"))
    # closed form: the fold is A [fan_in, r] @ B [r, fan_out] per target and layer
    fold = 2 * 2 * 32 * (128 * 128 + 256 * 128)
    assert F.fold_flops(adapted) == fold and F.fold_flops(cfg) == 0
    prefill = F.body_flops(adapted, 3 * 10, 10) + F.head_flops(adapted, 3)
    decode = F.body_flops(cfg, 6 * 8, 10 + 4) + F.head_flops(cfg, 6 * 8)  # no adapter products
    assert F.sample_flops(adapted, 3, 10, 6, 8) == prefill + fold + decode
    assert F.sample_flops(cfg, 3, 10, 6, 8) == F.body_flops(cfg, 30, 10) + F.head_flops(cfg, 3) + decode
    # XLA's count of the fold as the decoder builds it (its elementwise scale and add on top)
    model = lora.attach(Transformer(cfg, rngs=nnx.Rngs(0)), rank=32, alpha=64.0, targets=("q", "down"))
    graphdef, params = nnx.split(model, nnx.Param)
    fn = jax.jit(lambda p: nnx.merge(graphdef, p).decoder().layers)
    cost = fn.lower(params).compile().cost_analysis()
    xla = (cost if isinstance(cost, dict) else cost[0])["flops"]
    assert fold <= xla <= 1.1 * fold, (fold, xla)
