"""What a recipe asks of the loop, checked against the losses themselves: a recipe reads the
behaviour log-prob (or the teacher) iff changing that input changes its loss or its gradient."""

import jax
import numpy as np
import pytest

import opd_jax.objectives as O
from tests.objectives.conftest import make_batch

# every recipe at its defaults, and the variants that read other inputs (a PPO surrogate, the
# sampled-token loss of OPSD, a student-top-k baseline); SimCT reads a cross-tokenizer alignment
# this batch does not have (test_virtual_vocab.py checks both answers on its own inputs)
CONFIGS = [cls() for cls in O.RECIPES.values() if cls is not O.SimCTConfig] + [
    O.AOPDConfig(surrogate="ppo"), O.OPSDConfig(loss="sampled"),
    O.VOPDConfig(baseline="topk", k=10), O.LGRConfig(form="advantage")]


def _loss_and_grad(cfg, b, teacher_logits, behavior_logp):
    obj = O.build_objective(cfg)
    extras = {**b["extras"], "behavior_logp": behavior_logp}

    def loss(z):
        feats = O.compute_features(obj.features, tokens=b["tokens"], mask=b["mask"], logits=z,
                                   teacher_logits=teacher_logits, extras=extras)
        ctx = O.TokenCtx(mask=b["mask"], features=feats, extras=extras, key=b["key"],
                         step=np.int32(3))
        return O.total(obj.apply(ctx, obj.init())[0])
    return jax.value_and_grad(loss)(b["hidden"] @ b["head"])


def _differ(a, b) -> bool:
    return any(not np.allclose(x, y, rtol=1e-6, atol=1e-7) for x, y in zip(a, b))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_needs_behavior_logp_and_reads_teacher_match_the_loss(cfg):
    b = make_batch(1)
    zt = b["t_hidden"] @ b["t_head"]
    base = _loss_and_grad(cfg, b, zt, b["extras"]["behavior_logp"])
    shifted = _loss_and_grad(cfg, b, zt, b["extras"]["behavior_logp"] - 0.7)
    assert O.needs_behavior_logp(cfg) == _differ(base, shifted)
    other_teacher = _loss_and_grad(cfg, b, 1.5 * zt + 0.3, b["extras"]["behavior_logp"])
    assert O.reads_teacher(cfg) == _differ(base, other_teacher)


def test_loop_defaults_are_the_recipes_documented_ones():
    assert O.loop_defaults(O.GKDConfig()) == {"lmbda": 0.5}  # TRL's GKD default
    assert O.loop_defaults(O.UniSDConfig()) == {"ema_decay": 0.9, "ema_every": 10}  # UniSD code
    assert O.loop_defaults(O.OPDConfig()) == {}
