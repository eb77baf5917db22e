"""Multi-turn episodes (``loop.turns``): every row is the prompt, then the student's turns and the
record's environment turns in order (checked against the records, turn by turn), each student
token keeps the log-prob a full forward over the whole episode gives it, the environment's
tokens are attended to but carry no loss, what the sampler records for an objective follows
each token, a run trains, and what episodes cannot be combined with is refused before any model
is built."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import opd_jax.objectives as O
from opd_jax.data import DataError
from opd_jax.training.batch import STUDENT_TURN
from opd_jax.training.config import LoopConfig
from opd_jax.training.loop import Trainer
from test_loop import V, experiment
from test_reference import independent_logp
from test_served import served, server, teacher_dir  # noqa: F401 (fixtures)

EOS = tuple(range(2, 12))  # a third of the vocabulary ends a turn: episodes of several turns


def write_episodes(path, n=32, seed=0, env=True):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            rec = {"prompt_ids": rng.integers(12, V, rng.integers(2, 5)).tolist()}
            if env and i % 4:  # every fourth record has no environment turns: one-turn episodes
                rec["env_turns_ids"] = [rng.integers(12, V, rng.integers(1, 4)).tolist()
                                        for _ in range(rng.integers(1, 4))]
            f.write(json.dumps(rec) + "\n")
    return str(path)


def _exp(tmp_path, turns, objective=O.OPDConfig(), env=True, **loop):
    exp = experiment(tmp_path, objective, steps=2, lr=1e-2, samples=2,
                     loop=LoopConfig(lmbda=1.0, turns=turns, **loop))
    data = dataclasses.replace(exp.data, path=write_episodes(tmp_path / "episodes.jsonl", env=env))
    return dataclasses.replace(exp, data=data, sampler=exp.sampler.replace(eos_ids=EOS))


def local(x):
    return np.asarray(jax.device_get(x))


def segments(tokens, student):
    """A row's completion as alternating (is the student's, tokens) runs."""
    out = []
    for tok, s in zip(tokens, student):
        if out and out[-1][0] == s:
            out[-1][1].append(int(tok))
        else:
            out.append((bool(s), [int(tok)]))
    return out


def test_episodes_follow_the_records_and_keep_the_students_logprobs(tmp_path):
    trainer = Trainer(_exp(tmp_path, turns=3))
    prompts = trainer.prompts(0)
    batch, stats = trainer._batch("on_policy", prompts, jax.random.key(7), 0)
    tokens, real, loss = (local(x) for x in (batch.targets, batch.student.mask[:, -batch.completion_len:],
                                             batch.loss_mask))
    assert (loss <= real).all()
    member = local(batch.extras[STUDENT_TURN])  # [B, N, turns]
    assert member.shape == loss.shape + (3,) and (member.sum(-1) == loss).all()
    turns_seen = []
    for r, ex in enumerate(e for e in prompts.examples for _ in range(2)):
        runs = segments(tokens[r][real[r]], loss[r][real[r]])
        student = [t for s, t in runs if s]
        assert [tokens[r][member[r, :, k]].tolist() for k in range(len(student))] == student
        assert not member[r, :, len(student):].any()
        env = [tuple(t) for s, t in runs if not s]
        assert runs[0][0] and len(student) <= 3 and len(student) == len(env) + 1
        assert env == list(ex.env_turns_ids[:len(env)])  # the record's turns, in order
        for k, turn in enumerate(student[:-1]):  # a turn followed by another ended with an EOS
            assert turn[-1] in EOS and len(turn) <= 8, (r, k)
        last = student[-1]
        if len(student) < 3 and len(env) < len(ex.env_turns_ids):
            assert last[-1] not in EOS or len(last) == 0  # it went on whenever it could
        turns_seen.append(len(student))
    assert max(turns_seen) == 3 and min(turns_seen) == 1
    assert stats["sample/turns"] == pytest.approx(np.mean(turns_seen))
    # every student token's behaviour log-prob is the student's, given the whole episode so far
    own = local(independent_logp(trainer.s_graph, trainer.state.params, batch))
    got = local(batch.behavior_logp)
    np.testing.assert_allclose(got[loss], own[loss], atol=2e-5)
    assert not got[real & ~loss].any()  # environment tokens: no behaviour log-prob
    # the same key gives the same episodes (a resumed run repeats them)
    again, _ = trainer._batch("on_policy", prompts, jax.random.key(7), 0)
    np.testing.assert_array_equal(local(again.targets), tokens)


def test_one_turn_is_the_single_turn_batch(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    one = Trainer(_exp(tmp_path / "a", turns=1))
    many = Trainer(_exp(tmp_path / "b", turns=3))
    prompts = one.prompts(0)
    a, _ = one._batch("on_policy", prompts, jax.random.key(1), 0)
    b, _ = many._batch("on_policy", prompts, jax.random.key(1), 0)
    ra, rb = local(a.loss_mask), local(b.loss_mask)
    first = [segments(t[m], m[m])[0][1] for t, m in zip(local(a.targets), ra)]
    assert first == [segments(t[m], lm[m])[0][1] for t, m, lm in zip(
        local(b.targets), local(b.student.mask[:, -b.completion_len:]), rb)]  # turn 1 is shared


def test_episodes_carry_what_the_sampler_recorded_for_a_topk_objective(tmp_path):
    """Top-k PPO (the sampling policy's top-k ids and log-probs, its entropy) on episodes: each
    student token's records are the student's top-k given the whole episode so far (a full
    forward, NumPy's top-k), the environment's tokens and the padding hold zeros, a step trains."""
    trainer = Trainer(_exp(tmp_path, turns=3, objective=O.TopKOPDConfig(k=4, surrogate="ppo")))
    batch, _ = trainer._batch("on_policy", trainer.prompts(0), jax.random.key(7), 0)
    loss, member = local(batch.loss_mask), local(batch.extras[STUDENT_TURN])
    assert member[..., 1].any() and member[..., 2].any()  # later turns' tokens are there
    s = batch.student
    logits, _ = nnx.merge(trainer.s_graph, trainer.state.params)(s.tokens, s.positions, mask=s.mask)
    n = batch.completion_len
    lp = local(jax.nn.log_softmax(logits[:, -n - 1:-1].astype(jnp.float32), axis=-1))
    ids, top = local(batch.extras["behavior_topk_ids"]), local(batch.extras["behavior_topk_logp"])
    entropy = local(batch.extras["behavior_entropy"])
    assert ids.shape == loss.shape + (4,) and top.shape == loss.shape + (4,) and entropy.shape == loss.shape
    want = np.sort(lp, axis=-1)[..., ::-1][..., :4]
    np.testing.assert_allclose(top[loss], want[loss], atol=2e-5)
    np.testing.assert_allclose(np.take_along_axis(lp, ids, -1)[loss], want[loss], atol=2e-5)  # ids name them
    np.testing.assert_allclose(entropy[loss], -np.sum(np.exp(lp) * lp, -1)[loss], atol=2e-5)
    assert not ids[~loss].any() and not top[~loss].any() and not entropy[~loss].any()
    m = trainer.iteration()
    assert np.isfinite(m["loss/total"]) and m["loss/tokens"] > 0


def test_teacher_mixed_episodes_keep_the_mixtures_logprob_in_every_turn(tmp_path):
    """MiniLLM's coin in every student turn (``loop.teacher_mix``): each student token's behaviour
    log-prob is the mixture's, log(q / 2 + p / 2), with the student's p and the teacher's q from
    full forwards over the whole episode; the teacher's share is logged over all turns."""
    trainer = Trainer(_exp(tmp_path, turns=3, teacher_mix=0.5))
    batch, stats = trainer._batch("on_policy", trainer.prompts(0), jax.random.key(7), 0)
    loss, member = local(batch.loss_mask), local(batch.extras[STUDENT_TURN])
    assert member[..., 1].any() and member[..., 2].any()
    student = local(independent_logp(trainer.s_graph, trainer.state.params, batch))
    teacher = local(independent_logp(trainer.teacher.graphdef, trainer.teacher.params, batch))
    want = np.logaddexp(np.log(0.5) + teacher, np.log(0.5) + student)
    np.testing.assert_allclose(local(batch.behavior_logp)[loss], want[loss], atol=2e-5)
    assert stats["sample/teacher_mix"] == 0.5 and 0.3 < stats["sample/from_teacher"] < 0.7, stats
    m = trainer.iteration()
    assert np.isfinite(m["loss/total"]) and 0.3 < m["sample/from_teacher"] < 0.7


def test_a_run_trains_on_episodes(tmp_path):
    trainer = Trainer(_exp(tmp_path, turns=2, objective=O.TCODConfig(separators=EOS, grow_steps=2)))
    for _ in range(2):
        m = trainer.iteration()
        assert np.isfinite(m["loss/total"]) and m["loss/tokens"] > 0


def test_each_turns_share_and_reverse_kl_are_logged(tmp_path):
    """The train step logs each student turn's share of the loss tokens and the mean log p - log q
    of its tokens, equal to NumPy's over the batch's turns with log-probs from independent
    forwards of the student and the teacher, combined exactly over two micro-batches."""
    exp = _exp(tmp_path, turns=3)
    trainer = Trainer(dataclasses.replace(exp, step=dataclasses.replace(exp.step, grad_accum=2)))
    now = trainer._prepare(0, 0)
    batch = now.finish()
    member, loss = local(batch.extras[STUDENT_TURN]), local(batch.loss_mask)
    student = local(independent_logp(trainer.s_graph, trainer.state.params, batch))
    teacher = local(independent_logp(trainer.teacher.graphdef, trainer.teacher.params, batch))
    _, metrics = trainer._updates(trainer.step_fn, trainer.state, batch, now.scored)
    assert member[..., 1].any() and member[..., 2].any()  # later turns are there to be measured
    for k in range(3):
        inside = member[..., k] & loss
        assert metrics[f"turns/{k + 1}/token_share"] == pytest.approx(inside.sum() / loss.sum(), rel=1e-6)
        want = np.mean((student - teacher)[inside])
        assert metrics[f"turns/{k + 1}/reverse_kl"] == pytest.approx(want, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("changes, match", [
    (dict(env=False), r"loop.turns=2, but no record has env_turns_ids"),
])
def test_what_episodes_cannot_do_is_refused(tmp_path, changes, match):
    with pytest.raises((ValueError, DataError), match=match):
        Trainer(_exp(tmp_path, turns=2, **changes))


def test_golden_rows_are_refused_with_episodes(tmp_path):
    exp = _exp(tmp_path, turns=2, golden_fraction=0.5)
    path = tmp_path / "with_completions.jsonl"
    records = [dict(json.loads(line), completion_ids=[12, 13]) for line in open(exp.data.path)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match=r"loop.turns=2 \(multi-turn episodes\) cannot be combined with "
                                         r"loop.golden_fraction > 0"):
        Trainer(dataclasses.replace(exp, data=dataclasses.replace(exp.data, path=str(path))))


def test_prompt_buckets_too_small_for_a_later_turn_are_refused(tmp_path):
    exp = _exp(tmp_path, turns=3)
    exp = dataclasses.replace(exp, sampler=exp.sampler.replace(prompt_buckets=(8, 16)))
    with pytest.raises(ValueError, match=r"loop.turns=3: a later turn starts from the episode so far, "
                                         r"up to \d+ tokens .* more than the largest of "
                                         r"sampler.prompt_buckets=\(8, 16\)"):
        Trainer(exp)


def test_an_episode_longer_than_the_model_is_refused(tmp_path):
    exp = _exp(tmp_path, turns=3)
    exp = dataclasses.replace(exp, sampler=exp.sampler.replace(max_new_tokens=60))
    with pytest.raises(DataError, match=r"plus loop.turns=3 x sampler.max_new_tokens=60 and its "
                                        r"environment turns \(\d+ tokens\) exceeds the student's"):
        Trainer(exp)


def test_bad_records_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt_ids": [12, 13], "env_turns_ids": [[14], []]}) + "\n")
    exp = _exp(tmp_path, turns=2)
    with pytest.raises(DataError, match=r"bad.jsonl:1: env_turns_ids holds an empty turn"):
        Trainer(dataclasses.replace(exp, data=dataclasses.replace(exp.data, path=str(path))))


@pytest.mark.slow
def test_a_served_teacher_scores_every_student_token_of_an_episode(tmp_path, teacher_dir, server):
    """The server gets the whole episode and scores its completion (environment tokens included):
    at the student's tokens its log-probs equal the local teacher's."""
    from flax import nnx
    from opd_jax.training.config import ModelSpec, TeacherSpec
    (tmp_path / "local").mkdir(), (tmp_path / "served").mkdir()
    local_exp = _exp(tmp_path / "local", turns=3)
    local = Trainer(dataclasses.replace(local_exp, teacher=TeacherSpec(
        kind="model", model=ModelSpec(path=str(teacher_dir)))))
    remote = Trainer(dataclasses.replace(_exp(tmp_path / "served", turns=3), teacher=served(server)))
    batch, _ = local._batch("on_policy", local.prompts(0), jax.random.key(7), 0)
    loss = np.asarray(jax.device_get(batch.loss_mask))
    assert (np.asarray(jax.device_get(batch.student.mask[:, -batch.completion_len:])) & ~loss).any()
    dense = local.teacher.score(batch, None, None)
    head = nnx.merge(local.teacher.graphdef, local.teacher.params).lm_head_weight()
    lq = np.asarray(jax.nn.log_softmax(np.asarray(dense.teacher_hidden) @ np.asarray(head)), np.float64)
    want = np.take_along_axis(lq, np.asarray(batch.targets)[..., None], -1)[..., 0]
    got = np.asarray(remote.teacher.score(batch, None, None).extras["teacher_logp"])
    np.testing.assert_allclose(got[loss], want[loss], atol=1e-5)
