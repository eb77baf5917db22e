"""LGR with a served teacher (``opd_jax.teachers.ServedLookahead``) against ``python -m opd_jax.serve``
on the loopback interface: the server's next-token log-prob equals the local model's, the
candidates and rewards equal the local look-ahead's (tree attention) with the same teacher in both
protocols, a run with the served teacher follows the local one, and a malformed answer names its
field."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import opd_jax.objectives as O
from opd_jax.teachers import wire
from opd_jax.teachers.lookahead import ServedLookahead, WithLookahead
from opd_jax.training.config import ModelSpec, ServedSpec, TeacherSpec
from opd_jax.training.loop import Trainer
from test_loop import V, experiment
from test_served import server, teacher_dir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow
CFG = O.LGRConfig(k=3, branch_points=2, min_entropy=0.0)


def _trainer(path, teacher, **kw):
    path.mkdir()
    return Trainer(experiment(path, CFG, teacher=teacher, lr=1e-3, samples=2, steps=3, **kw))


def local_spec(teacher_dir):
    return TeacherSpec(kind="model", model=ModelSpec(path=str(teacher_dir)))


def served_spec(url, **kw):
    return TeacherSpec(kind="served", served=ServedSpec(url=url, top_k=4, **kw))


@pytest.mark.parametrize("api", ["openai", "sglang"])
def test_the_next_token_logprob_equals_the_local_models(tmp_path, teacher_dir, server, api):
    trainer = _trainer(tmp_path / "run", served_spec(server, api=api, rows_per_request=2))
    local = _trainer(tmp_path / "local", local_spec(teacher_dir))
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, V, n).tolist() for n in (1, 5, 9)]
    got, counts, error = trainer.teacher.inner.next_logp(seqs)
    assert error is None and counts["teacher/requests"] == 2
    teacher = nnx.merge(local.teacher.inner.graphdef, local.teacher.inner.params)
    for s, lp in zip(seqs, got):
        out, _ = teacher(jnp.asarray([s], jnp.int32), jnp.arange(len(s), dtype=jnp.int32)[None])
        want = float(jnp.max(jax.nn.log_softmax(out[0, -1].astype(jnp.float32))))
        assert lp == pytest.approx(want, abs=1e-5)


def test_candidates_and_rewards_equal_the_local_lookahead(tmp_path, teacher_dir, server):
    local = _trainer(tmp_path / "local", local_spec(teacher_dir))
    remote = _trainer(tmp_path / "served", served_spec(server, rows_per_request=5))
    sglang = _trainer(tmp_path / "sglang", served_spec(server, api="sglang"))
    assert isinstance(local.teacher, WithLookahead) and isinstance(remote.teacher, ServedLookahead)
    batch, _ = local._batch("on_policy", local.prompts(0), jax.random.key(3), 0)
    want = local.teacher.score(batch, None, local.state.params).extras
    for trainer in (remote, sglang):
        got = trainer.teacher.score(batch, None, local.state.params).extras
        reward = np.asarray(want[O.LGR_REWARD])
        active = np.abs(reward).sum(-1) > 0
        assert active.sum() > 0
        np.testing.assert_array_equal(np.asarray(got[O.LGR_IDS])[active],
                                      np.asarray(want[O.LGR_IDS])[active])
        np.testing.assert_allclose(np.asarray(got[O.LGR_REWARD]), reward, atol=2e-4)
        assert {"teacher_logp", "teacher_topk_ids"} <= set(got)  # its usual scores too
        assert not {"behavior_topk_ids", "behavior_entropy"} & set(got)
    m = remote.teacher.metrics()
    branches = int(np.sum(active)) * CFG.k
    assert m["teacher/lookahead_requests"] == np.ceil(branches / 5) and m["teacher/requests"] > 0


def test_a_run_with_the_served_teacher_follows_the_local_one(tmp_path, teacher_dir, server):
    local = _trainer(tmp_path / "local", local_spec(teacher_dir))
    remote = _trainer(tmp_path / "served", served_spec(server))
    for _ in range(2):
        a, b = local.iteration(), remote.iteration()
        np.testing.assert_allclose(b["loss/total"], a["loss/total"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(b["lgr/candidates"], a["lgr/candidates"], rtol=1e-3, atol=1e-5)
    assert b["teacher/lookahead_requests"] > 0


@pytest.mark.parametrize("api, body, named", [
    ("openai", {"choices": [{"index": 0, "logprobs": None}]}, r"choices\[0\].logprobs.top_logprobs"),
    ("openai", {"choices": [{"index": 0, "logprobs": {"top_logprobs": [{"a": 0.5}]}}]},
     r"choices\[0\].logprobs.top_logprobs\[0\]\['a'\]"),
    ("openai", {"choices": []}, r"choices: expected a list of 1"),
    ("sglang", [{"meta_info": {"output_top_logprobs": [[]]}}], r"\[0\].meta_info.output_top_logprobs"),
    ("sglang", [{"meta_info": {"output_top_logprobs": [[["x", 3, None]]]}}],
     r"output_top_logprobs\[0\]\[0\]\[0\]"),
])
def test_a_malformed_next_token_answer_names_the_field(api, body, named):
    with pytest.raises(wire.MalformedResponse, match=named):
        wire.parse_next(api, body, 1)
