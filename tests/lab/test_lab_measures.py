"""The lab's per-evaluation measures against NumPy references on models whose distributions are
known (position-indexed logit tables), and against hand-checked answers."""

import numpy as np
import pytest
from table_model import POSITIONS, V, script, split

from opd_jax import evaluate as E
from opd_jax.data import load_examples
from opd_jax.lab import countdown as C
from opd_jax.lab import data as L
from opd_jax.lab import measures as M
from opd_jax.lab import tokenizer as T
from opd_jax.lab.tokenizer import EOS_ID, PAD_ID
from opd_jax.models import load_tokenizer
from opd_jax.sampling import SamplerConfig


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(T.save(tmp_path_factory.mktemp("tok")))


def _ids(tok, s):
    return tok(s, add_special_tokens=False)["input_ids"]


def _examples(tok, tmp_path, problems, fmt="forward"):
    path = str(tmp_path / "d.jsonl")
    L.write_records(path, [L.record(p, tok, fmt=fmt) for p in problems])
    return load_examples(path, tokenizer=tok, max_prompt_len=32)


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _reference(s_table, t_table, positions, k):
    """Per position, float64: both entropies, tail masses, overlap count/masses/advantage."""
    p, q = _softmax(s_table[positions].astype(np.float64)), _softmax(t_table[positions].astype(np.float64))
    out = {"student_entropy": -(p * np.log(p)).sum(-1), "teacher_entropy": -(q * np.log(q)).sum(-1)}
    s_top, t_top = np.argsort(-p, -1)[..., :k], np.argsort(-q, -1)[..., :k]
    take = lambda a, i: np.take_along_axis(a, i, -1)  # noqa: E731
    out[f"tail_student@{k}"] = 1 - take(p, s_top).sum(-1)
    out[f"tail_teacher@{k}"] = 1 - take(p, t_top).sum(-1)
    inside = (s_top[..., :, None] == t_top[..., None, :]).any(-1)
    w = take(p, s_top) / take(p, s_top).sum(-1, keepdims=True)
    out[f"overlap_count@{k}"] = inside.sum(-1)
    out[f"overlap_mass_student@{k}"] = np.where(inside, take(p, s_top), 0).sum(-1)
    out[f"overlap_mass_teacher@{k}"] = np.where(inside, take(q, s_top), 0).sum(-1)
    out[f"overlap_adv_sum@{k}"] = np.where(inside, w * (np.log(take(q, s_top)) - np.log(take(p, s_top))), 0).sum(-1)
    return out


def test_token_features_match_numpy_on_known_distributions():
    rng = np.random.default_rng(0)
    s_table, t_table = (rng.normal(0, 2, (POSITIONS, V)).astype(np.float32) for _ in range(2))
    student, teacher = split(s_table), split(t_table)
    # two rows: a 4-token prompt and a 3-token one (left-padded), then 5 completion slots
    tokens = rng.integers(4, V, (2, 9)).astype(np.int32)
    mask = np.ones((2, 9), bool)
    mask[1, 0] = False
    mask[1, 7:] = False  # the second completion ended early
    n, ks = 5, (1, 3)
    feats = M.token_features(*student, *teacher, tokens, mask, n=n, ks=ks)
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)[:, -n - 1:-1]  # the positions predicting them
    valid = mask[:, -n:]
    for k in ks:
        ref = _reference(s_table, t_table, positions, k)
        for name, want in ref.items():
            np.testing.assert_allclose(np.asarray(feats[name])[valid], want[valid], rtol=2e-5, atol=2e-6,
                                       err_msg=name)


def test_summaries_are_the_documented_means():
    m = np.array([[True, True, True, False]])
    ht = np.array([[0.5, 1.0, 2.0, 9.0]])
    hs = np.array([[0.1, 0.9, 0.3, 9.0]])
    count = np.array([[2.0, 0.0, 1.0, 4.0]])
    feats = {"student_entropy": hs, "teacher_entropy": ht, "tail_student@2": np.array([[0.1, 0.2, 0.3, 9]]),
             "tail_teacher@2": np.array([[0.3, 0.2, 0.1, 9]]), "overlap_count@2": count,
             "overlap_mass_student@2": np.array([[0.8, 0.0, 0.4, 9]]),
             "overlap_mass_teacher@2": np.array([[0.6, 0.0, 0.2, 9]]),
             "overlap_adv_sum@2": np.array([[0.3, 0.0, -0.6, 9]])}
    out = M.summarize(feats, m, ["high_entropy:0.8", "tail_mass:2", "overlap:2"])
    assert out["high_entropy/student"] == pytest.approx((0.9 + 0.3) / 2)
    assert out["high_entropy/teacher"] == pytest.approx(1.5)
    assert out["high_entropy/share_teacher"] == pytest.approx(2 / 3)
    assert out["high_entropy/share_student"] == pytest.approx(1 / 3)
    assert out["tail_mass/student_topk"] == pytest.approx(0.2) and out["tail_mass/teacher_topk"] == pytest.approx(0.2)
    assert out["overlap/ratio"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert out["overlap/mass_student"] == pytest.approx(0.6)  # positions with a non-empty overlap
    assert out["overlap/mass_teacher"] == pytest.approx(0.4)
    assert out["overlap/advantage"] == pytest.approx(-0.3 / 3)  # per overlap token
    assert out["overlap/entropy_gap"] == pytest.approx((0.4 + 0.1 + 1.7) / 3)
    assert out["overlap/entropy_gap_abs"] == pytest.approx((0.4 + 0.1 + 1.7) / 3)
    none = M.summarize(feats, m, ["high_entropy:5"])
    assert np.isnan(none["high_entropy/student"]) and none["high_entropy/share_teacher"] == 0


def test_rule_adherence_counts_correct_and_parsable_answers():
    p = C.Problem((9, 8, 5), 67)
    q = C.Problem((9, 8, 5), 77)
    a, b = {"numbers": [9, 8, 5], "target": 67}, {"numbers": [9, 8, 5], "target": 77}
    texts = ["9*8=72 72-5=67",  # correct, subtracts
             "9*8=72 72+5=77",  # correct, follows "no subtraction"
             "9*8=72 72+5=78",  # parsable, wrong, follows
             "9*8=72 72+5",     # unparsable
             "9*8=72 72+5=77"]  # wrong for 67, follows
    assert C.verify(p, texts[0], "forward") and C.verify(q, texts[1], "forward")
    out = M.rule_adherence(texts, [a, b, b, a, a], "no_subtraction")
    assert out == {"rule/adherence": 0.5, "rule/adherence_all": 3 / 4, "rule/correct_following": 1 / 5}
    first = M.rule_adherence(texts[:2], [a, b], "multiply_first")
    assert first["rule/adherence"] == 1.0
    assert np.isnan(M.rule_adherence(["1+1=2"], [a], "no_subtraction")["rule/adherence"])


def test_measures_of_a_scripted_student_against_a_soft_teacher(tok, tmp_path):
    """A near-deterministic student writing one answer to every problem, a teacher with a known
    soft distribution at each position: closed forms for every measure."""
    problems = [C.Problem((9, 8, 5), 67), C.Problem((9, 8, 5), 13), C.Problem((9, 8, 5), 72)]
    examples = _examples(tok, tmp_path, problems)
    start = len(examples[0].prompt_ids)
    answer = _ids(tok, "9*8=72 72-5=67")
    student = split(script(answer, start, 60.0))
    favourite = _ids(tok, "8*9=72 67=72-5")  # the teacher's most likely token at each position
    margin = 1.0
    teacher = split(script(favourite, start, margin))
    ctx = M.Context(student=student, teacher=teacher, examples=examples, tokenizer=tok, k=3)
    out = M.evaluate(["high_entropy:0.8", "tail_mass:1", "overlap:1", "rule:no_subtraction"], ctx)
    z = np.exp(margin) + V - 1
    h = -(np.exp(margin) / z * (margin - np.log(z)) + (V - 1) / z * -np.log(z))  # > 0.8 nats
    assert h > 0.8
    assert out["high_entropy/share_teacher"] == pytest.approx(1.0)
    assert out["high_entropy/teacher"] == pytest.approx(h, rel=1e-5)
    assert out["high_entropy/student"] < 1e-6 and out["high_entropy/share_student"] == 0
    ids = answer + [EOS_ID]
    differ = np.mean([a != f for a, f in zip(ids, favourite + [EOS_ID])])
    assert out["tail_mass/student_topk"] < 1e-6
    assert out["tail_mass/teacher_topk"] == pytest.approx(differ, abs=1e-6)
    assert out["overlap/ratio"] == pytest.approx(1 - differ)
    assert out["overlap/entropy_gap"] == pytest.approx(h, rel=1e-4)
    # correct for 67 only; every answer subtracts
    assert out["rule/adherence"] == 0.0 and out["rule/adherence_all"] == 0.0
    assert out["rule/correct_following"] == 0.0


def test_the_measures_see_the_evaluations_own_samples(tok, tmp_path):
    problems = [C.Problem((9, 8, 5), t) for t in (67, 13, 72, 77)]
    examples = _examples(tok, tmp_path, problems)
    student = split(np.random.default_rng(1).normal(0, 1.5, (POSITIONS, V)))
    seen = []
    width = max(len(e.prompt_ids) for e in examples)
    cfg = SamplerConfig(max_new_tokens=8, eos_ids=(EOS_ID,), pad_id=PAD_ID, temperature=1.0,
                        prompt_buckets=(width,), new_token_buckets=(8,))
    E.evaluate(*student, examples, reward_fn=lambda e, c: 0.0, cfg=cfg, k=3, seed=M.EVAL_SEED,
               per_problem={"x": lambda e, comps, r: seen.extend(comps) or {}})
    tokens, _, cmask, p = M.draws(M.Context(student=student, teacher=None, examples=examples, tokenizer=tok,
                                            k=3, max_new_tokens=8))
    mine = [t[m] for t, m in zip(tokens[:, p:], cmask[:, p:])]
    assert len(mine) == len(seen) == 12
    assert all(np.array_equal(a, b) for a, b in zip(mine, seen))


def test_acceptance_of_a_copy_and_of_a_contrarian(tok, tmp_path):
    """acceptance:G in closed form, against a near-deterministic teacher: a student that is the
    teacher has every draft accepted, so each row's blocks are its answer's length over G + 1,
    rounded up; one whose every token differs has every draft rejected (one token per block)."""
    problems = [C.Problem((9, 8, 5), t) for t in (67, 13, 72)]
    examples = _examples(tok, tmp_path, problems)
    start = len(examples[0].prompt_ids)
    answer = _ids(tok, "9*8=72 72-5=67")
    sure = split(script(answer, start, 60.0))
    ctx = M.Context(student=sure, teacher=sure, examples=examples, tokenizer=tok, k=4, max_new_tokens=24)
    out = M.evaluate(["acceptance:3"], ctx)
    n = len(answer) + 1  # every row writes the answer, then EOS
    assert out["acceptance/rate"] == 1.0
    assert out["acceptance/length"] == pytest.approx(n / np.ceil(n / 4))
    other = split(np.roll(script(answer, start, 60.0), 1, axis=1))  # every favourite one id later
    out = M.evaluate(["acceptance:2"], M.Context(student=other, teacher=sure, examples=examples, tokenizer=tok,
                                                 k=2, max_new_tokens=16))
    assert out["acceptance/rate"] == 0.0 and out["acceptance/length"] == 1.0
    with pytest.raises(ValueError, match="draft for a teacher"):
        M.evaluate(["acceptance:2"], M.Context(student=sure, teacher=None, examples=examples, tokenizer=tok, k=2))


def test_malformed_measures_are_refused_by_name():
    for bad, match in [("tail_mass", "unknown measure"), ("entropy:3", "unknown measure"),
                       ("tail_mass:x", "is not a int"), ("rule:never", "unknown rule"),
                       ("grad_variance:1", ">= 2"), ("acceptance:0", ">= 1")]:
        with pytest.raises(ValueError, match=match):
            M.check((bad,))
    with pytest.raises(ValueError, match="once"):
        M.check(("tail_mass:2", "tail_mass:4"))
    with pytest.raises(ValueError, match="tuple"):
        M.check(["tail_mass:2"])
    assert M.parse("high_entropy:0.8") == ("high_entropy", 0.8)
