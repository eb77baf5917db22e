"""The verdict rules against hand-computed numbers, and every experiment's verdict on stored
results made up so that the answer is known (3 seeds: the rules' minimum)."""

import math

import numpy as np
import pytest

from opd_jax.lab import reproduce as RP
from opd_jax.lab import verdicts as V

NOISE = (-0.01, 0.0, 0.01)  # per seed: a spread, so that differences have a standard error
METRICS = ("pass@1", "greedy_pass@1", "pass@8", "reverse_kl", "entropy", "distinct_correct", "finished",
           "high_entropy/student", "tail_mass/student_topk", "overlap/ratio", "rule/adherence",
           "grad_variance/log_ratio", "grad_variance/mean_gap", "turns",
           "turn1_pass@1", "acceptance/length")
STEPS = (0, 10, 20, 30, 40)


def fake(arms, value, seeds=(0, 1, 2)):
    """Stored-looking runs: ``value(arm, seed, step, metric)`` at every evaluation, FLOPs growing
    by ``value(arm, seed, step, "flops")`` (default 1 per step)."""
    out = []
    for arm in arms:
        for seed in seeds:
            evals = []
            for step in STEPS:
                e = {"step": step, "flops": float(value(arm, seed, step, "flops") or step)}
                e.update({m: float(value(arm, seed, step, m)) for m in METRICS})
                evals.append(e)
            out.append({"arm": arm, "seed": seed, "evals": evals, "schedule": {"every": 10, "k": 8},
                        "train": [{"step": 40, "tip/kept_frac": 0.5}]})
    return out


def test_compare_is_the_pooled_standard_error_rule():
    a, b = [0.5, 0.7, 0.6], [0.1, 0.3, 0.2]
    p = V.compare("x", a, b, a_label="a", b_label="b", metric="m")
    se = math.sqrt(0.1 ** 2 / 3 + 0.1 ** 2 / 3)
    assert p["difference"] == pytest.approx(0.4) and p["pooled_se"] == pytest.approx(se)
    assert p["outcome"] == "holds" and p["claim"] == "a > b on m"
    assert V.compare("x", b, a, a_label="b", b_label="a", metric="m")["outcome"] == "reversed"
    assert V.compare("x", a, b, a_label="a", b_label="b", metric="m", lower=True)["outcome"] == "reversed"
    close = [0.25, 0.45, 0.35]  # 0.15 above b, 2 SE = 0.163
    assert V.compare("x", close, b, a_label="a", b_label="b", metric="m")["outcome"] == "unresolved"
    assert V.compare("x", close, b, a_label="a", b_label="b", metric="m", kind="not_worse")["outcome"] == "holds"
    assert V.compare("x", b, a, a_label="b", b_label="a", metric="m", kind="not_worse")["outcome"] == "reversed"
    assert V.compare("x", a[:2], b[:2], a_label="a", b_label="b", metric="m")["outcome"] == "unresolved"
    assert V.compare("x", [math.nan] * 3, b, a_label="a", b_label="b", metric="m")["outcome"] == "unresolved"
    with pytest.raises(ValueError, match="kind"):
        V.compare("x", a, b, a_label="a", b_label="b", metric="m", kind="maybe")


def test_paired_changes_and_combine():
    assert V.paired("p", [-0.3, -0.2, -0.25], label="d", metric="m")["outcome"] == "holds"
    assert V.paired("p", [0.3, 0.2, 0.25], label="d", metric="m")["outcome"] == "reversed"
    assert V.paired("p", [-0.3, 0.2, 0.05], label="d", metric="m")["outcome"] == "unresolved"
    runs = fake(["a"], lambda arm, seed, step, m: 0.1 + step / 100 + NOISE[seed])
    up = V.changes(runs, "pass@1", "a")
    assert up["outcome"] == "holds" and up["difference"] == pytest.approx(0.4)
    assert V.changes(runs, "pass@1", "a", up=False)["outcome"] == "reversed"
    part = lambda o: {"outcome": o, "name": o, "a": {"label": "x", "mean": 0, "std": 0, "n": 3},  # noqa: E731
                      "b": None, "metric": "m", "kind": "paired", "difference": 0, "pooled_se": 0, "factor": 2}
    assert V.combine([part("holds"), part("holds")], "r")["verdict"] == V.REPRODUCED
    assert V.combine([part("holds"), part("reversed")], "r")["verdict"] == V.NOT_REPRODUCED
    assert V.combine([part("holds"), part("unresolved")], "r")["verdict"] == V.INCONCLUSIVE
    assert V.combine([], "r")["verdict"] == V.INCONCLUSIVE
    assert "unresolved (no target)" in V.describe(V.unresolved("u", "c", "m", "no target"))


def test_steps_to_a_target_and_values_at_equal_flops():
    runs = fake(["a"], lambda arm, seed, step, m: step / 100 if m != "flops" else 3 * step, seeds=(0,))
    assert V.steps_to(runs[0], "pass@1", 0.2) == 20 and V.steps_to(runs[0], "pass@1", 0.0) == 0
    assert V.steps_to(runs[0], "pass@1", 0.9) == 50  # never: the last step plus one interval
    assert V.at_flops(runs[0], "pass@1", 45.0) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="spent only"):
        V.at_flops(runs[0], "pass@1", 121.0)
    two = fake(["a", "b"], lambda arm, seed, step, m: (2 if arm == "a" else 1) * step if m == "flops" else 0)
    assert V.common_flops(two, ["a", "b"]) == 40
    assert V.per_seed(two, "pass@1", ["a", "b"], lambda x, y: x - y) == [0.0, 0.0, 0.0]
    assert V.train_mean(two, "a", "tip/kept_frac") == 0.5 and math.isnan(V.train_mean(two, "a", "x"))


@pytest.mark.parametrize("name", RP.NAMES)
def test_every_verdict_is_inconclusive_when_the_arms_do_not_differ(name):
    module = RP.load(name)
    arms = [a.name for a in module.arms("quick")]
    # every metric the same for every arm; the two estimators' variances equal (log ratio 0)
    runs = fake(arms, lambda arm, seed, step, m: None if m == "flops" else
                NOISE[seed] if m == "grad_variance/log_ratio" else 0.3 + NOISE[seed])
    v = module.verdict(runs, "quick")
    assert v["verdict"] == V.INCONCLUSIVE and v["rule"] == module.RULE and v["parts"]
    # no difference: a 'no worse' part holds, every other part is unresolved
    assert all(p["outcome"] == ("holds" if p["kind"] == "not_worse" else "unresolved") for p in v["parts"])


def test_topk_bias_verdicts_follow_the_numbers():
    module = RP.load("topk_bias")
    arms = [a.name for a in module.arms("quick")]

    def value(bias):
        def f(arm, seed, step, m):
            if m == "tail_mass/student_topk":
                return 0.1 + NOISE[seed] + (bias * step / 100 if arm == "topk" else 0)
            if m == "reverse_kl":
                return 0.3 + NOISE[seed] + (bias * step / 100 if arm == "topk" else 0)
            return 0.3 + NOISE[seed] if m != "flops" else None
        return f
    assert module.verdict(fake(arms, value(1.0)), "quick")["verdict"] == V.REPRODUCED
    assert module.verdict(fake(arms, value(-0.5)), "quick")["verdict"] == V.NOT_REPRODUCED


def test_relaxed_measures_steps_to_half_of_opds_gain():
    module = RP.load("relaxed")
    arms = [a.name for a in module.arms("quick")]

    def value(arm, seed, step, m):  # opd: 0.1 -> 0.3, past the target 0.2 at step 20; reopold at 10
        if m == "flops":
            return None
        rate = 0.03 if arm == "reopold" else 0.006
        return min(0.1 + rate * step, 0.3) + NOISE[seed % 3] / 10
    v = module.verdict(fake(arms, value, seeds=range(5)), "quick")
    assert v["notes"]["target"] == pytest.approx(0.2, abs=1e-3)
    assert v["parts"][0]["a"]["values"] == [10.0] * 5 and v["parts"][0]["b"]["values"] == [20.0] * 5
    assert v["verdict"] == V.REPRODUCED


def test_opd_against_sft_and_rl_at_equal_flops():
    module = RP.load("opd_vs_sft_vs_rl")

    def value(arm, seed, step, m):
        if m == "flops":
            return {"opd": 3, "sft": 1, "rl": 2}[arm] * step
        return (0.1 + step / 100 if arm == "opd" else 0.1 + step / 400) + NOISE[seed]
    v = module.verdict(fake(["opd", "sft", "rl"], value), "quick")
    assert v["notes"]["common_flops"] == 40  # sft's whole budget
    at = {p["name"]: p for p in v["parts"]}
    # at 40 FLOPs opd has run 13.3 steps: 0.233 against sft's 0.2 at its last step
    assert at["opd vs sft (equal FLOPs)"]["difference"] == pytest.approx(0.4 / 3 - 0.1, abs=1e-9)
    assert v["verdict"] == V.REPRODUCED


def test_control_variate_pairs_the_estimators_per_seed():
    module = RP.load("control_variate")

    def value(log_ratio):
        return lambda arm, seed, step, m: (log_ratio + NOISE[seed] if m == "grad_variance/log_ratio" else
                                           None if m == "flops" else 0.3 + NOISE[seed])
    assert module.verdict(fake(["opd", "vopd"], value(-0.5)), "quick")["verdict"] == V.REPRODUCED
    assert module.verdict(fake(["opd", "vopd"], value(0.5)), "quick")["verdict"] == V.NOT_REPRODUCED
    assert np.isfinite(module.verdict(fake(["opd", "vopd"], value(0.0)), "quick")["notes"]["mean_gap"]["mean"])


def test_update_extrapolation_times_the_arms_to_half_of_opds_gain():
    module = RP.load("update_extrapolation")
    arms = [a.name for a in module.arms("quick")]

    def curve(rise_at):  # pass@1 0.2 until the arm's step, 0.4 from it on
        return lambda arm, seed, step, m: (None if m == "flops" else
                                           (0.4 if step >= rise_at[arm] else 0.2) + NOISE[seed])
    fast = module.verdict(fake(arms, curve({"opd": 30, "effopd": 10, "lr_x2": 20, "effopd_secant": 40})), "quick")
    assert fast["verdict"] == V.REPRODUCED
    assert fast["notes"]["steps_to_target"]["effopd"]["mean"] == 10
    # the secant arm (added after the first run) is judged in the notes only
    assert [p["outcome"] for p in fast["notes"]["secant_reading"]["parts"]] == ["reversed", "holds"]
    slow = module.verdict(fake(arms, curve({"opd": 10, "effopd": 30, "lr_x2": 20, "effopd_secant": 10})), "quick")
    assert slow["verdict"] == V.NOT_REPRODUCED
    # as fast, but ending lower: the final-performance part is reversed
    lower = fake(arms, lambda arm, seed, step, m: None if m == "flops" else
                 (0.4 if step >= 10 else 0.2) + NOISE[seed] - (0.1 if arm == "effopd" and step == 40 else 0))
    assert module.verdict(lower, "quick")["verdict"] == V.NOT_REPRODUCED


def test_reference_anchor_compares_the_anchored_arm_with_opd():
    module = RP.load("reference_anchor")
    arms = [a.name for a in module.arms("quick")]

    def ends(anchor_gain):
        return lambda arm, seed, step, m: (None if m == "flops" else 0.3 + NOISE[seed] + (
            anchor_gain * step / 40 if arm == "anchor" else 0))
    assert module.verdict(fake(arms, ends(0.1)), "quick")["verdict"] == V.REPRODUCED
    assert module.verdict(fake(arms, ends(-0.1)), "quick")["verdict"] == V.NOT_REPRODUCED
    assert module.verdict(fake(arms, ends(0.01)), "quick")["verdict"] == V.INCONCLUSIVE


def test_lookahead_reward_compares_lgr_with_opd():
    module = RP.load("lookahead_reward")
    arms = [a.name for a in module.arms("quick")]
    assert arms == ["opd", "lgr", "lgr_0.1", "lgr_prob", "lgr_advantage"]

    def ends(gain, other=0.0):
        return lambda arm, seed, step, m: (None if m == "flops" else 0.3 + NOISE[seed] + step / 40 * (
            gain if arm == "lgr" else other if arm.startswith("lgr_") else 0))
    assert module.verdict(fake(arms, ends(0.1)), "quick")["verdict"] == V.REPRODUCED
    assert module.verdict(fake(arms, ends(-0.1)), "quick")["verdict"] == V.NOT_REPRODUCED
    assert module.verdict(fake(arms, ends(0.01)), "quick")["verdict"] == V.INCONCLUSIVE
    # the other LGR arms are reported, never judged
    assert module.verdict(fake(arms, ends(0.01, other=0.3)), "quick")["verdict"] == V.INCONCLUSIVE


def test_turn_curriculum_compares_tcod_with_opd():
    module = RP.load("turn_curriculum")
    arms = [a.name for a in module.arms("quick")]
    assert arms == ["opd", "tcod", "tcod_backward"]
    check_tcod_verdict(module, arms, small=0.01)


def test_turn_curriculum_episodes_compares_tcod_with_opd_on_retry_episodes():
    module = RP.load("turn_curriculum_episodes")
    arms = module.arms("quick")
    assert [a.name for a in arms] == ["opd", "tcod", "tcod_backward", "opd_single"]
    assert all(a.student == "weak_retry" and a.teacher == "teacher_retry" for a in arms)
    assert [("loop.turns=2" in a.overrides) for a in arms] == [True, True, True, False]
    assert module.schedule("quick").turns == 2
    check_tcod_verdict(module, [a.name for a in arms], small=0.01)


def test_turn_curriculum_deep_compares_tcod_with_opd_on_three_answer_episodes():
    module = RP.load("turn_curriculum_deep")
    arms = module.arms("quick")
    assert [a.name for a in arms] == ["opd", "tcod"] and module.schedule("quick").turns == 3
    assert all("loop.turns=3" in a.overrides and a.student == "weak_retry" for a in arms)
    check_tcod_verdict(module, ["opd", "tcod"], small=0.005)


def test_turn_curriculum_two_retries_compares_tcod_with_opd_from_models_taught_two_retries():
    module = RP.load("turn_curriculum_two_retries")
    arms = module.arms("quick")
    assert [a.name for a in arms] == ["opd", "tcod", "tcod_backward"] and module.schedule("quick").turns == 3
    assert module.schedule("quick").reference == "teacher_retry2"
    assert all("loop.turns=3" in a.overrides and (a.student, a.teacher) == ("weak_retry2", "teacher_retry2")
               for a in arms)
    check_tcod_verdict(module, [a.name for a in arms], small=0.005)


def test_speculative_drafter_compares_draft_opd_with_opd_and_own_samples():
    module = RP.load("speculative_drafter")
    arms = module.arms("quick")
    assert [a.name for a in arms] == ["opd", "tv_own", "tv_assisted", "draft_opd", "fkl_draft_opd"]
    assert [("loop.draft_tokens=4" in a.overrides) for a in arms] == [False, False, True, True, True]
    assert module.schedule("quick").measures == ("acceptance:4",)
    names = [a.name for a in arms]
    verdict = lambda gains: module.verdict(fake(names, rising(gains)), "quick")["verdict"]  # noqa: E731
    assert verdict({"draft_opd": 0.1}) == V.REPRODUCED
    assert verdict({"draft_opd": 0.1, "tv_own": 0.1}) == V.INCONCLUSIVE  # beats OPD only
    assert verdict({"opd": 0.1}) == V.NOT_REPRODUCED
    assert verdict({"draft_opd": 0.01}) == V.INCONCLUSIVE
    assert verdict({"tv_assisted": 0.3, "fkl_draft_opd": 0.3}) == V.INCONCLUSIVE  # reported, never judged


def test_speculative_drafter_small_compares_the_same_arms_from_a_small_drafter():
    module = RP.load("speculative_drafter_small")
    arms = module.arms("quick")
    assert [a.name for a in arms] == ["opd", "tv_own", "draft_opd"] and {a.student for a in arms} == {"weak_small"}
    assert [("loop.draft_tokens=4" in a.overrides) for a in arms] == [False, False, True]
    names = [a.name for a in arms]
    verdict = lambda gains: module.verdict(fake(names, rising(gains)), "quick")["verdict"]  # noqa: E731
    assert verdict({"draft_opd": 0.1}) == V.REPRODUCED
    assert verdict({"draft_opd": 0.1, "tv_own": 0.1}) == V.INCONCLUSIVE
    assert verdict({"tv_own": 0.1}) == V.NOT_REPRODUCED
    assert verdict({"draft_opd": 0.01}) == V.INCONCLUSIVE


def test_speculative_replay_small_weighs_the_error_positions_on_assisted_rollouts():
    module = RP.load("speculative_replay_small")
    arms = module.arms("quick")
    assert [a.name for a in arms] == ["tv_assisted", "draft_opd", "draft_opd_w4"]
    assert all("loop.draft_tokens=4" in a.overrides and a.student == "weak_small" for a in arms)
    assert [a.objective.error_weight for a in arms] == [0.0, 1.0, 3.0]
    names = [a.name for a in arms]
    verdict = lambda gains: module.verdict(fake(names, rising(gains)), "quick")["verdict"]  # noqa: E731
    assert verdict({"draft_opd": 0.1}) == V.REPRODUCED
    assert verdict({"tv_assisted": 0.1}) == V.NOT_REPRODUCED
    assert verdict({"draft_opd": 0.01}) == V.INCONCLUSIVE
    assert verdict({"draft_opd_w4": 0.3}) == V.INCONCLUSIVE  # reported, never judged


def test_lora_capacity_trains_adapters_of_each_rank_at_ten_times_the_rate():
    module = RP.load("lora_capacity")
    arms = module.arms("quick")
    assert [a.name for a in arms] == ["full", "lora_r1", "lora_r4", "lora_r16"]
    assert [a.overrides for a in arms] == [(), ("student.lora_rank=1",), ("student.lora_rank=4",),
                                           ("student.lora_rank=16",)]
    assert [a.lr / arms[0].lr for a in arms] == [1.0, 10.0, 10.0, 10.0]
    names = [a.name for a in arms]
    verdict = lambda gains: module.verdict(fake(names, rising(gains)), "quick")["verdict"]  # noqa: E731
    assert verdict({}) == V.INCONCLUSIVE  # no arm below full, but none learned either
    assert verdict({"full": 0.1}) == V.NOT_REPRODUCED
    assert verdict({"full": 0.1, "lora_r16": 0.1, "lora_r1": 0.1}) == V.REPRODUCED
    assert verdict({"full": 0.1, "lora_r16": 0.1}) == V.NOT_REPRODUCED  # rank 1 falls behind
    assert verdict({"full": 0.1, "lora_r16": 0.1, "lora_r1": 0.1, "lora_r4": -0.3}) == V.REPRODUCED  # reported


def test_lora_rank_scaling_compares_the_two_scalings_at_rank_16():
    module = RP.load("lora_rank_scaling")
    arms = module.arms("quick")
    assert [a.name for a in arms] == ["lora_r16", "lora_r16_rs", "lora_r4_rs"]
    assert [a.overrides for a in arms] == [("student.lora_rank=16",),
                                           ("student.lora_rank=16", "student.lora_rslora=true"),
                                           ("student.lora_rank=4", "student.lora_rslora=true")]
    assert len({a.lr for a in arms}) == 1
    names = [a.name for a in arms]
    verdict = lambda gains: module.verdict(fake(names, rising(gains)), "quick")["verdict"]  # noqa: E731
    assert verdict({}) == V.INCONCLUSIVE
    assert verdict({"lora_r16_rs": 0.1}) == V.REPRODUCED
    assert verdict({"lora_r16": 0.1}) == V.NOT_REPRODUCED
    assert verdict({"lora_r16_rs": 0.1, "lora_r4_rs": 0.3}) == V.REPRODUCED  # rank 4 is reported only


def rising(gains: dict):
    """A fake pass@1: 0.3 plus the seed's noise at step 0, each arm rising linearly by ``gains[arm]``
    (0 if absent) over the run (40 steps here)."""
    return lambda arm, seed, step, m: (None if m == "flops"
                                       else 0.3 + NOISE[seed] + step / 40 * gains.get(arm, 0.0))


def check_tcod_verdict(module, names, small):
    """The TCOD experiments' rule: tcod against opd decides it; the other arms are reported beside
    it, never judged (they may end far above)."""
    others = {a: 0.3 for a in names if a not in ("opd", "tcod")}
    assert module.verdict(fake(names, rising({"tcod": 0.1})), "quick")["verdict"] == V.REPRODUCED
    assert module.verdict(fake(names, rising({"tcod": -0.1})), "quick")["verdict"] == V.NOT_REPRODUCED
    assert module.verdict(fake(names, rising({"tcod": small, **others})), "quick")["verdict"] == V.INCONCLUSIVE


def test_rollout_reuse_compares_reuse_with_one_step_per_batch_at_the_same_samples():
    module = RP.load("rollout_reuse")
    arms = [a.name for a in module.arms("quick")]
    assert arms == ["opd_ppo", "reuse_2", "reuse_2_is", "reuse_mb2"]
    # opd_ppo at step 20 (the same batches as reuse_2's 40 steps): 0.3 + 0.1
    assert module.verdict(fake(arms, rising({"opd_ppo": 0.2, "reuse_2": 0.2})), "quick")["verdict"] == V.REPRODUCED
    assert module.verdict(fake(arms, rising({"opd_ppo": 0.2})), "quick")["verdict"] == V.NOT_REPRODUCED
    got = module.verdict(fake(arms, rising({"opd_ppo": 0.2, "reuse_2": 0.1, "reuse_mb2": 0.4})), "quick")
    assert got["verdict"] == V.INCONCLUSIVE  # the other reuse arms are reported, never judged
    assert got["notes"]["reuse_mb2_same_samples"]["outcome"] == "holds"


def test_divergence_aware_sft_needs_dasd_above_both_controls():
    module = RP.load("divergence_aware_sft")
    arms = [a.name for a in module.arms("quick")]

    def ends(gain):  # dasd ends `gain` above the two controls, which match
        return lambda arm, seed, step, m: (None if m == "flops" else 0.3 + NOISE[seed] + (
            gain[arm] * step / 40 if arm in gain else 0))
    assert module.verdict(fake(arms, ends({"dasd": 0.1})), "quick")["verdict"] == V.REPRODUCED
    assert module.verdict(fake(arms, ends({"dasd": 0.1, "seqkd_x2": 0.2})), "quick")["verdict"] == V.NOT_REPRODUCED
    assert module.verdict(fake(arms, ends({"dasd": 0.1, "seqkd": 0.1})), "quick")["verdict"] == V.INCONCLUSIVE


def test_peer_rollouts_needs_the_peer_arm_above_rl_and_above_its_start():
    module = RP.load("peer_rollouts")
    arms = [a.name for a in module.arms("quick")]

    def ends(gain):  # each arm ends `gain[arm]` above where every arm starts
        return lambda arm, seed, step, m: (None if m == "flops" else 0.3 + NOISE[seed] + (
            gain.get(arm, 0) * step / 40))
    assert module.verdict(fake(arms, ends({"peers": 0.1})), "quick")["verdict"] == V.REPRODUCED
    assert module.verdict(fake(arms, ends({"peers": 0.1, "rl": 0.2})), "quick")["verdict"] == V.NOT_REPRODUCED
    assert module.verdict(fake(arms, ends({"peers": -0.1, "rl": -0.2})), "quick")["verdict"] == V.NOT_REPRODUCED
    assert module.verdict(fake(arms, ends({"peers": 0.1, "rl": 0.1})), "quick")["verdict"] == V.INCONCLUSIVE


def test_cross_tokenizer_needs_the_cross_arm_to_rise_and_to_match_the_same_tokenizer_arm():
    module = RP.load("cross_tokenizer")
    arms = [a.name for a in module.arms("quick")]

    def ends(gain):  # each arm ends `gain[arm]` above where every arm starts
        return lambda arm, seed, step, m: (None if m == "flops" else 0.2 + NOISE[seed] + (
            gain.get(arm, 0) * step / 40))
    both = {"cross_tokenizer": 0.1, "same_tokenizer": 0.1}
    assert module.verdict(fake(arms, ends(both)), "quick")["verdict"] == V.REPRODUCED
    assert module.verdict(fake(arms, ends({"cross_tokenizer": 0.1, "same_tokenizer": 0.2})),
                          "quick")["verdict"] == V.NOT_REPRODUCED
    assert module.verdict(fake(arms, ends({"cross_tokenizer": -0.1})), "quick")["verdict"] == V.NOT_REPRODUCED
    assert module.verdict(fake(arms, ends({"cross_tokenizer": 0.0})), "quick")["verdict"] == V.INCONCLUSIVE


def test_virtual_vocabulary_needs_simct_to_rise_and_to_beat_the_sampled_span_signal():
    module = RP.load("virtual_vocabulary")
    arms = [a.name for a in module.arms("quick")]

    def ends(gain):
        return lambda arm, seed, step, m: (None if m == "flops" else 0.2 + NOISE[seed] + (
            gain.get(arm, 0) * step / 40))
    assert module.verdict(fake(arms, ends({"simct": 0.2, "span_opd": 0.1})), "quick")["verdict"] == V.REPRODUCED
    assert module.verdict(fake(arms, ends({"simct": 0.1, "span_opd": 0.2})), "quick")["verdict"] == V.NOT_REPRODUCED
    assert module.verdict(fake(arms, ends({"simct": -0.1})), "quick")["verdict"] == V.NOT_REPRODUCED
    out = module.verdict(fake(arms, ends({"simct": 0.1, "span_opd": 0.1})), "quick")
    assert out["verdict"] == V.INCONCLUSIVE and set(module.NOTES) <= set(out["notes"])
