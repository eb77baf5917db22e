"""Environments of multi-turn episodes (:mod:`opd_jax.environments`): an environment that reads
the student's turns shapes each episode (checked row by row against the environment called again
on the student's own turns), the retry environment asks again after wrong answers only, the
replies are checked, and a bad environment is refused before any model is built."""

import dataclasses

import jax
import numpy as np
import pytest

import opd_jax.environments as EN
from opd_jax.data import Example
from opd_jax.training import batches as B
from opd_jax.training.loop import Trainer
from test_episodes import EOS, _exp, local, segments
from test_loop import V


class Tool(EN.Environment):
    """A 'tool' whose output depends on what the student wrote: after a turn whose first token is
    a multiple of 3 it stops, else it answers with two tokens computed from the turn."""
    max_reply_tokens = 2

    def reply(self, example, turns):
        last = turns[-1]
        if last[0] % 3 == 0:
            return None
        return [12 + (last[0] + len(turns)) % (V - 12), 12 + len(last) % (V - 12)]


def odd_first(example, ids) -> float:
    """A 'verifier': right when the turn's first token is even."""
    return float(len(ids) > 0 and ids[0] % 2 == 0)


def episodes_of(trainer, key=7):
    prompts = trainer.prompts(0)
    batch, stats = trainer._batch("on_policy", prompts, jax.random.key(key), 0)
    real = local(batch.student.mask[:, -batch.completion_len:])
    tokens, loss = local(batch.targets), local(batch.loss_mask)
    rows = [segments(t[m], lm[m]) for t, m, lm in zip(tokens, real, loss)]
    n = trainer.exp.sampler.num_samples
    return [e for e in prompts.examples for _ in range(n)], rows, stats


def test_an_environment_that_reads_the_students_turns_shapes_each_episode(tmp_path):
    env = Tool()
    trainer = Trainer(_exp(tmp_path, turns=3), environment=env)
    examples, rows, stats = episodes_of(trainer)
    lengths = []
    for ex, runs in zip(examples, rows):
        student = [t for s, t in runs if s]
        replies = [tuple(t) for s, t in runs if not s]
        for k, reply in enumerate(replies):  # each reply is the environment's to the turns before
            assert reply == tuple(env.reply(ex, student[:k + 1]))
        if len(student) < 3 and student[-1] and student[-1][-1] in EOS:
            assert env.reply(ex, student) is None  # it stopped only when the environment did
        lengths.append(len(student))
    assert max(lengths) == 3 and min(lengths) == 1  # the records' env_turns are not read
    assert stats["sample/turns"] == pytest.approx(np.mean(lengths))


def test_retry_asks_again_after_wrong_answers_only(tmp_path):
    message = (14, 15, 16)
    env = EN.Retry(odd_first, message=message)
    assert env.max_reply_tokens == 3
    trainer = Trainer(_exp(tmp_path, turns=3), environment=env)
    examples, rows, _ = episodes_of(trainer)
    counts = []
    for ex, runs in zip(examples, rows):
        student = [t for s, t in runs if s]
        assert all(tuple(t) == message for s, t in runs if not s)
        for turn in student[:-1]:  # every turn answered by the environment was wrong
            assert turn[-1] in EOS and not odd_first(ex, turn)
        last = student[-1]
        if len(student) < 3 and last and last[-1] in EOS:
            assert odd_first(ex, last)  # an ended turn with no retry after it was right
        counts.append(len(student))
    assert 1 in counts and max(counts) >= 2


def test_the_configured_environment_is_built_by_name(tmp_path):
    exp = dataclasses.replace(_exp(tmp_path, turns=2), environment="retry")
    with pytest.raises(ValueError, match=r"environment 'retry' checks each answer with the run's reward"):
        Trainer(exp)
    trainer = Trainer(exp, reward_fn=odd_first)
    assert isinstance(trainer.environment, EN.Retry) and trainer.environment.reward_fn is odd_first
    with pytest.raises(ValueError, match=r"both an environment and environment='retry'"):
        Trainer(exp, reward_fn=odd_first, environment=Tool())


def make_tool(tokenizer=None, eos_ids=(), reward_fn=None):
    return Tool()


def make_nothing(tokenizer=None, eos_ids=(), reward_fn=None):
    return lambda example, turns: None


class Mute(EN.Environment):
    def reply(self, example, turns):
        return None


@pytest.mark.parametrize("name, match", [
    ("nope", r"unknown environment 'nope'; built-in: \['calculator', 'retry'\]"),
    ("no_such_module:f", r"environment 'no_such_module:f': cannot import f"),
    ("test_environments:make_nothing", r"the factory returned function, not an opd_jax.environments.Environment"),
])
def test_bad_environment_names_are_refused(name, match):
    with pytest.raises(ValueError, match=match):
        EN.get(name)


def test_a_factory_path_builds_its_environment():
    assert isinstance(EN.get("test_environments:make_tool"), Tool)
    assert isinstance(EN.get(""), EN.RecordTurns)


def test_environments_that_cannot_act_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"environment='retry' answers the student between the turns"):
        dataclasses.replace(_exp(tmp_path, turns=1), environment="retry")
    with pytest.raises(ValueError, match=r"the environment Mute bounds every reply at 0 tokens"):
        Trainer(_exp(tmp_path, turns=2), environment=Mute())


def test_an_episode_too_long_for_the_environments_bound_is_refused(tmp_path):
    env = EN.Retry(odd_first, message=(14,), max_reply_tokens=40)
    exp = _exp(tmp_path, turns=3)
    with pytest.raises(ValueError, match=r"environment turns \(\d+ tokens\) exceeds the student's"):
        Trainer(dataclasses.replace(exp, sampler=exp.sampler.replace(max_new_tokens=32)), environment=env)


def test_replies_are_checked():
    ex = Example((12, 13), line=5)

    class Says(EN.Environment):
        max_reply_tokens = 2

        def __init__(self, out):
            self.out = out

        def reply(self, example, turns):
            return self.out
    where = r"environment Says, record at line 5, after student turn 1: "
    for out, match in [((), "an empty reply; return None to end the episode"),
                       ((12, V), rf"token id {V} outside the vocabulary \[0, {V}\)"),
                       ((12, 13, 14), r"a reply of 3 tokens, more than its bound reply_bound=2"),
                       ("hello", "a reply in text, but this run has no tokenizer")]:
        with pytest.raises(ValueError, match=where + match):
            EN.responder(Says(out), [ex], None, V)([0], [[[3]]])
    assert EN.responder(Says([12, 13]), [ex], None, V)([0], [[[3]]]) == [(12, 13)]
    seen = []
    render = lambda record, msg, where: seen.append((msg, where)) or (20, 21)  # noqa: E731
    assert EN.responder(Says({"role": "tool", "content": "4"}), [ex], render, V)([0], [[[3]]]) == [(20, 21)]
    assert seen == [({"role": "tool", "content": "4"}, where[:-2])]


def test_record_turns_follow_the_record():
    ex = Example((12,), env_turns_ids=((14,), (15, 16)))
    env = EN.RecordTurns()
    assert [env.reply(ex, [[3]] * t) for t in (1, 2, 3)] == [(14,), (15, 16), None]
    assert [env.reply_bound(ex, t) for t in (1, 2, 3)] == [1, 2, 0]
    assert EN.reply_tokens(env, ex, 3) == 3 and EN.reply_tokens(EN.Retry(odd_first, (1, 2)), ex, 4) == 6


def test_an_episodes_reward_reads_its_last_student_turn(tmp_path):
    trainer = Trainer(_exp(tmp_path, turns=3), environment=Tool())
    prompts = trainer.prompts(0)
    batch, _ = trainer._batch("on_policy", prompts, jax.random.key(7), 0)
    seen = []
    batch = B.with_rewards(trainer.rows, batch, prompts, lambda e, ids: seen.append(list(ids)) or len(ids),
                           episodes=True)
    examples, rows, _ = episodes_of(trainer)
    last = [[t for s, t in runs if s][-1] for runs in rows]
    assert seen == last and any(len(runs) > 1 for runs in rows)
    assert local(batch.extras["reward"])[:, 0].tolist() == [float(len(t)) for t in last]


def test_replies_run_concurrently_up_to_the_environments_concurrency(tmp_path):
    """``concurrency=4``: four replies wait on one barrier, which only opens when four threads
    reach it at once (with one thread at a time the barrier times out and the run fails)."""
    import threading

    class Slow(Tool):
        concurrency = 4

        def __init__(self):
            self.barrier, self.threads = threading.Barrier(4, timeout=20), set()

        def reply(self, example, turns):
            self.threads.add(threading.get_ident())
            if len(turns) == 1:
                self.barrier.wait()  # the first turn's replies: at least 4 rows ask at once
            return super().reply(example, turns)
    env = Slow()
    examples, rows, _ = episodes_of(Trainer(_exp(tmp_path, turns=2), environment=env))
    assert len(env.threads) >= 2 and any(len(runs) > 1 for runs in rows)
    # the same episodes as one thread at a time gives (the replies do not depend on the threads)
    serial = Tool()
    for ex, runs in zip(examples, rows):
        student = [t for s, t in runs if s]
        replies = [tuple(t) for s, t in runs if not s]
        assert replies == ([tuple(serial.reply(ex, student[:1]))] if len(student) > 1 else [])
