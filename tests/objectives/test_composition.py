"""The composition layer behaves like the arithmetic it names: weighted sums with schedules,
shared features, reductions over micro-batches, and the recipe registry behind
``--set objective=<name>``."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import opd_jax.objectives as O
from opd_jax.config import override
from opd_jax.objectives.recipes import ObjectiveConfig, OPDConfig, make_config
from tests.objectives.conftest import make_batch


def _setup(seed=0):
    b = make_batch(seed)
    return b, b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"]


def _loss_of(obj, feats, b, step=4):
    ctx = O.TokenCtx(mask=b["mask"], features=feats, extras=b["extras"], step=jnp.int32(step))
    return O.total(obj.apply(ctx, obj.init())[0])


def test_weighted_sum_equals_the_sum_of_its_parts_with_schedules():
    b, z, zt = _setup(1)
    sched = optax.linear_schedule(0.0, 1.0, transition_steps=10)
    gkd = O.build_objective(O.GKDConfig(beta=0.5))
    sft = O.build_objective(O.SFTConfig())
    combo = O.weighted_sum(jsd=(2.0, gkd), ce=(sched, sft))
    assert combo.token_loss is not None
    feats = O.compute_features(combo.features, tokens=b["tokens"], mask=b["mask"], logits=z,
                               teacher_logits=zt)
    ctx = O.TokenCtx(mask=b["mask"], features=feats, step=jnp.int32(4))
    terms, state, metrics = combo.apply(ctx, combo.init())
    assert set(terms) == {"jsd/jsd", "ce/nll"}
    expected = 2.0 * _loss_of(gkd, feats, b) + 0.4 * _loss_of(sft, feats, b)
    np.testing.assert_allclose(O.total(terms), expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["ce/coef"], 0.4, rtol=1e-6)
    m = b["mask"]
    np.testing.assert_allclose(jnp.sum(jnp.where(m, combo.token_loss(ctx), 0)) / jnp.sum(m),
                               expected, rtol=1e-5)


def test_feature_name_conflicts_are_errors():
    a = O.build_objective(O.GKDConfig(beta=0.1))
    c = O.build_objective(O.GKDConfig(beta=0.9))
    with pytest.raises(ValueError, match="'jsd' is defined twice"):
        O.weighted_sum(a=(1.0, a), c=(1.0, c))
    # the same feature asked for twice is shared, not an error
    O.weighted_sum(a=(1.0, a), b=(1.0, O.build_objective(O.GKDConfig(beta=0.1))))


@pytest.mark.parametrize("reduce", [O.token_mean, O.seq_mean_token_mean, O.seq_mean_token_sum])
def test_reductions_add_over_microbatches(reduce):
    x = jax.random.normal(jax.random.key(3), (6, 5))
    m = jax.random.bernoulli(jax.random.key(4), 0.7, (6, 5)).at[2].set(False)
    whole = reduce(x, m)
    parts = reduce(x[:2], m[:2]) + reduce(x[2:], m[2:])
    np.testing.assert_allclose(parts.num, whole.num, rtol=1e-6)
    np.testing.assert_allclose(parts.den, whole.den, rtol=1e-6)
    assert float(O.Reduced(jnp.float32(3.0), jnp.float32(0.0)).value()) == 0.0


def test_reductions_select_out_masked_positions_whatever_they_hold():
    """inf / nan at zero-weight positions: value as if they were 0, gradient exactly 0 there."""
    x = jnp.array([[1.0, 2.0, jnp.inf], [jnp.nan, 3.0, -jnp.inf]])
    m = jnp.array([[True, True, False], [False, True, False]])
    for reduce in (O.token_mean, O.weighted_mean, O.seq_mean_token_mean, O.seq_mean_weighted_mean,
                   O.seq_mean_token_sum):
        value, grad = jax.value_and_grad(lambda a: reduce(a, m).value())(x)
        assert np.isfinite(value) and np.all(np.asarray(grad)[~np.asarray(m)] == 0.0), reduce
    np.testing.assert_allclose(O.token_mean(x, m).value(), 2.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Holder:
    """The shape of the trainer's Experiment.objective field (a factory switches the recipe)."""
    objective: ObjectiveConfig = dataclasses.field(default_factory=OPDConfig,
                                                   metadata={"factory": make_config})


@pytest.mark.parametrize("name", sorted(O.RECIPES))
def test_every_recipe_is_reachable_by_name_and_builds(name):
    """``--set objective=<name>`` (and a field of it) reaches every recipe, 2026 ones included."""
    cfg = override(_Holder(), f"objective={name}").objective
    assert type(cfg) is O.RECIPES[name] and O.recipe_name(cfg) == name
    cfg = override(_Holder(objective=cfg), "objective.temperature=0.8").objective
    assert cfg.temperature == 0.8
    obj = O.build_objective(cfg)
    assert obj.features


def test_new_options_are_settable_by_name():
    holder = override(_Holder(), "objective=opd")
    for assignment, field, value in [("objective.reduction=sum_per_sequence", "reduction",
                                      "sum_per_sequence"),
                                     ("objective.surrogate=ppo", "surrogate", "ppo")]:
        assert getattr(override(holder, assignment).objective, field) == value
    sead = override(override(_Holder(), "objective=sead"), "objective.zone_low_low=reverse_kl")
    assert sead.objective.zone_low_low == "reverse_kl"
    with pytest.raises(ValueError, match="zone_low_low must be one of"):
        make_config("sead", zone_low_low="nope")
    topk = make_config("topk_opd", support="teacher", weights="uniform")
    assert (topk.support, topk.weights) == ("teacher", "uniform")
    with pytest.raises(ValueError, match="support must be 'student' or 'overlap'"):
        make_config("topk_opd", support="union", surrogate="ppo")
    assert make_config("vopd", reward_clip=0.2).reward_clip == 0.2
    assert make_config("reopold", surrogate="ppo").surrogate == "ppo"


def test_required_inputs_name_every_extra_a_recipe_reads():
    """What the trainer must supply (or refuse) before compiling, per recipe."""
    need = {name: O.required_inputs(cls()) for name, cls in O.RECIPES.items()}
    assert need["reinforce"] == need["uni_opd"] == {"reward"}
    assert need["stable_opd"] == {"ref_logp"}
    assert need["simct"] == set(O.VIRTUAL_INPUTS)
    assert need["lgr"] == {"lgr_ids", "lgr_reward"} == set(O.LOOKAHEAD_INPUTS)
    assert need["draft_opd"] == {O.DRAFT_ERROR} and not O.required_inputs(O.DraftOPDConfig(error_weight=0))
    assert all(not v for k, v in need.items()
               if k not in ("reinforce", "uni_opd", "stable_opd", "simct", "lgr", "draft_opd"))
    assert O.required_inputs(O.UniSDConfig(agreement="sequence", contrastive_coef=0.1)) == {
        "aux_teacher_logp", "bad_teacher_logp"}
    assert O.required_inputs(O.TopKOPDConfig(surrogate="ppo")) == {"behavior_topk_ids",
                                                                  "behavior_topk_logp"}


def test_a_missing_vocabulary_extra_is_a_clear_error_before_compiling():
    b = make_batch()
    obj = O.build_objective(O.TopKOPDConfig(k=4, surrogate="ppo"))
    with pytest.raises(ValueError, match="reads the extra input 'behavior_topk_ids'"):
        jax.jit(lambda h: O.compute_features(obj.features, tokens=b["tokens"], mask=b["mask"],
                                             logits=h @ b["head"], teacher_logits=h @ b["head"])
                )(b["hidden"])
