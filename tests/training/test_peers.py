"""Teacher contexts built from a row's peer samples (opd_jax.training.peers, MOPD)."""

import json

import jax
import numpy as np
import pytest

import opd_jax.objectives as O
from opd_jax import data as D
from opd_jax.lab import tokenizer as LT
from opd_jax.models.config import tiny_config
from opd_jax.sampling import SamplerConfig
from opd_jax.sharding import make_mesh
from opd_jax.training import batches as B
from opd_jax.training import peers as PE
from opd_jax.training.batch import completion_hidden
from opd_jax.training.config import (DataConfig, Experiment, LoopConfig, MeshConfig, ModelSpec,
                                     OptimConfig, RunConfig, TeacherSpec)
from opd_jax.training.loop import Trainer

LAB = "hint {successes} | {prompt}"  # the lab's hint context, with a peer as the hint


@pytest.fixture(scope="module")
def tok():
    return LT.build()


def brute_force(rewards, group, s, f, threshold):
    """Per row: every other row of its group in the order row+1, row+2, ... (wrapping), the
    first ``s`` successes and the first ``f`` failures among them."""
    out = []
    for i in range(len(rewards)):
        g0 = (i // group) * group
        ring = list(range(i + 1, g0 + group)) + list(range(g0, i))
        out.append(([r for r in ring if rewards[r] >= threshold][:s],
                    [r for r in ring if rewards[r] < threshold][:f]))
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("group,s,f", [(2, 1, 0), (4, 2, 1), (4, 1, 3), (8, 3, 2), (5, 0, 2)])
def test_choose_matches_a_brute_force_search_and_never_shows_a_row_itself(seed, group, s, f):
    rng = np.random.default_rng(seed)
    rewards = rng.choice([0.0, 0.5, 1.0], size=3 * group)
    got = PE.choose(rewards, group, s, f, 1.0)
    assert got == brute_force(rewards, group, s, f, 1.0)
    for i, (good, bad) in enumerate(got):
        assert i not in good + bad and {r // group for r in good + bad} <= {i // group}
        assert all(rewards[r] >= 1.0 for r in good) and all(rewards[r] < 1.0 for r in bad)


def test_choose_gives_rows_of_a_group_different_peers():
    # rows 0, 1, 2 succeed: row 0 is shown row 1, row 1 row 2, row 2 row 0, row 3 row 0
    assert [g for g, _ in PE.choose([1, 1, 1, 0], 4, 1, 0, 1.0)] == [[1], [2], [0], [0]]
    with pytest.raises(ValueError, match="groups of 3"):
        PE.choose([1, 0, 1, 0], 3, 1, 0, 1.0)


def test_spec_refuses_bad_templates_and_counts():
    with pytest.raises(ValueError, match=r"only \{prompt\}"):
        PE.PeerSpec(successes=1, template="{successes} {prompt} {answer}")
    with pytest.raises(ValueError, match=r"\{failures\}"):
        PE.PeerSpec(successes=1, failures=1, template="{successes} {prompt}")
    with pytest.raises(ValueError, match=r"\{prompt\}"):
        PE.PeerSpec(successes=1, template="{successes}")
    with pytest.raises(ValueError, match="format string"):
        PE.PeerSpec(successes=1, template="{successes {prompt}")
    with pytest.raises(ValueError, match="successes must be an integer"):
        PE.PeerSpec(successes=-1)
    assert not PE.PeerSpec().on and PE.PeerSpec(failures=1, template="{failures}{prompt}").on
    spec = PE.PeerSpec(successes=2, failures=1, template="a {successes}{failures}{prompt}", separator="--")
    assert spec.literal() == "a ------" and spec.width(10, 7) == 32 and spec.width(10, 7, 8) == 40
    assert PE.PeerSpec(max_len=50).width(10, 7, 8) == 50


def example(tok, text, line=1):
    ids = tuple(tok(text, add_special_tokens=False)["input_ids"])
    return D.Example(ids, line=line, record={"prompt": text})


def test_contexts_render_the_peers_text_and_leave_rows_without_a_success_uninformed(tok):
    opts = D.TextOptions(tok)
    exs = [example(tok, "3 4 -> 7:", 1), example(tok, "2 5 -> 10:", 2)]
    texts = ["3+4=7", "3*4=12", "3+4=7", "3-4=1", "2+5=7", "5*2=10", "2-5=3", "2*5=10"]  # 4 per prompt
    completions = [tuple(tok(t, add_special_tokens=False)["input_ids"]) + (LT.EOS_ID,) for t in texts]
    rewards = [1, 0, 1, 0, 0, 1, 0, 1]
    spec = PE.PeerSpec(successes=1, failures=1, template="hint {successes} miss {failures} | {prompt}")
    ids, stats = PE.contexts(spec, exs, completions, rewards, opts, width=64)
    for i, got in enumerate(ids):
        good, bad = brute_force(rewards, 4, 1, 1, 1.0)[i]
        want = f"hint {texts[good[0]]} miss {' '.join(texts[r] for r in bad)} | {exs[i // 4].record['prompt']}"
        assert got == tuple(tok(want, add_special_tokens=False)["input_ids"]), i
    assert stats["peers/informed"] == 1 and stats["peers/success_rate"] == 0.5
    # no successful peer: uninformed; a context over the width: uninformed and counted
    ids, stats = PE.contexts(spec, exs, completions, [1, 0, 0, 0, 0, 0, 0, 0], opts, width=64)
    assert [x is not None for x in ids] == [False, True, True, True] + [False] * 4
    ids, stats = PE.contexts(spec, exs, completions, rewards, opts, width=24)
    assert all(x is None or len(x) <= 24 for x in ids) and stats["peers/too_long"] > 0


def test_a_chat_record_gets_its_last_user_turn_replaced():
    rec = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q?"},
                        {"role": "assistant", "content": "a"}]}
    assert PE.prompt_text(rec, "x") == "q?"
    assert PE.teacher_record(rec, "peer | q?") == {"teacher_messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "peer | q?"}]}
    assert PE.teacher_record({"prompt": "q?"}, "t") == {"teacher_prompt": "t"}
    with pytest.raises(D.DataError, match="prompt as text"):
        PE.prompt_text({"prompt_ids": [1, 2]}, "line 3")


def test_chat_records_get_the_context_through_the_teachers_chat_template():
    from opd_jax import smoke
    tok = smoke.chat_tokenizer()
    rec = {"messages": [{"role": "system", "content": "be brief"},
                        {"role": "user", "content": "What is 2 + 3?"}], "answer": "5"}
    ex = D.Example((1, 2), line=7, record=rec)
    completions = [tuple(tok("5", add_special_tokens=False)["input_ids"]) + (smoke.eos_ids(tok)[0],),
                   tuple(tok("6", add_special_tokens=False)["input_ids"])]
    spec = PE.PeerSpec(successes=1, failures=1, template="ok: {successes}\nwrong: {failures}\n{prompt}")
    ids, _ = PE.contexts(spec, [ex], completions, [1.0, 0.0], D.TextOptions(tok), width=200)
    oracle = tok.apply_chat_template([{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": "ok: 5\nwrong: \nWhat is 2 + 3?"}],
                                     add_generation_prompt=True, tokenize=True)
    oracle = oracle["input_ids"] if hasattr(oracle, "keys") else oracle
    assert ids[1] == tuple(oracle)  # row 1 (failed) sees row 0's success, and no failure of its own
    assert ids[0] is None  # row 0 has no successful peer


def test_the_loop_side_builds_each_rows_teacher_sequence_masks_and_rewards(tok):
    mesh = make_mesh(data=1)
    rows = B.Rows(mesh)
    exs = (example(tok, "1 2 -> 3:"), example(tok, "4 4 -> 16:", 2))
    p, m = D.left_pad([e.prompt_ids for e in exs], 12, 0)
    prompts = B.Prompts(exs, p, m, None, None, np.arange(2, dtype=np.int32), 2)
    texts = ["1+2=3", "2+1=3", "1*2=2", "2-1=1", "4*4=16", "4+4=8"]
    comp, cmask = D.right_pad([tuple(tok(t, add_special_tokens=False)["input_ids"]) + (LT.EOS_ID,)
                               for t in texts], 8, 0)
    rep = lambda x: np.repeat(x, 3, axis=0)  # noqa: E731
    with jax.set_mesh(mesh):
        batch = B.assemble(*map(rows.to_global, (rep(p), rep(m), comp, cmask, np.zeros(comp.shape, np.float32)))
                           ).replace(group=3)
        reward = lambda e, c: float(tok.decode(list(c), skip_special_tokens=True)  # noqa: E731
                                    in ("1+2=3", "2+1=3", "4*4=16"))
        peers = PE.PeerContexts(PE.PeerSpec(successes=1, template=LAB), D.TextOptions(tok), reward, 32, 0)
        out, stats = peers(rows, batch, prompts)
    informed = [True, True, True, True, False, True]  # row 4 ("4*4=16") has no successful peer
    np.testing.assert_array_equal(np.asarray(out.loss_mask), cmask & np.array(informed)[:, None])
    np.testing.assert_array_equal(np.asarray(out.extras["reward"])[:, 0], [1, 1, 0, 0, 1, 0])
    assert out.teacher_group == 1 and out.teacher_rows_group == 1 and out.group == 3
    shown = {0: 1, 1: 0, 2: 0, 3: 4, 5: 4}  # row -> its successful peer
    for r in range(6):
        want = (f"hint {texts[shown[r]]} | {exs[r // 3].record['prompt']}" if r in shown
                else exs[r // 3].record["prompt"])
        ctx = tok.decode([int(x) for x in np.asarray(out.teacher.tokens[r])[:32] if x != 0])
        assert ctx == want, r
    np.testing.assert_array_equal(np.asarray(out.teacher.tokens)[:, 32:], comp)
    assert stats["peers/informed"] == pytest.approx(5 / 6)


def test_a_teacher_scores_distinct_contexts_of_one_group_row_by_row():
    # teacher_rows_group = 1: each row's own context; sharing the group's first prompt would not be
    from flax import nnx
    from opd_jax.models import Transformer
    model = Transformer(tiny_config(vocab_size=32, hidden_size=32, num_layers=1, intermediate_size=64),
                        rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    t, m = rng.integers(1, 32, (4, 10)).astype(np.int32), np.ones((4, 10), bool)
    seq = B.join(t[:, :6], m[:, :6], t[:, 6:], m[:, 6:])
    row_by_row = completion_hidden(model, seq, 4, 1)
    h, _ = model.hidden(seq.tokens, seq.positions, mask=seq.mask)
    np.testing.assert_allclose(row_by_row, h[:, -5:-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(completion_hidden(model, seq, 4, 2), row_by_row, atol=1e-3)


def write_records(path, tok, n=16):
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for _ in range(n):
            a, b = rng.integers(1, 9, 2)
            f.write(json.dumps({"prompt": f"{a} {b} -> {a + b}:"}) + "\n")
    return str(path)


def peer_run(tmp_path, tok, reward, steps=2, data=None, **peers):
    tmp_path.mkdir(parents=True, exist_ok=True)
    student = ModelSpec(config=tiny_config(vocab_size=LT.vocab_size(), hidden_size=32, num_layers=1,
                                           intermediate_size=64), seed=0)
    exp = Experiment(student=student, teacher=TeacherSpec(kind="initial", peers=PE.PeerSpec(
        successes=1, template=LAB, **peers)), objective=O.OPSDConfig(), loop=LoopConfig(lmbda=1.0),
        sampler=SamplerConfig(max_new_tokens=6, pad_id=LT.PAD_ID, num_samples=4, eos_ids=(LT.EOS_ID,)),
        optim=OptimConfig(lr=1e-2), data=DataConfig(path=data or write_records(tmp_path / "d.jsonl", tok),
                                                   batch_size=4, max_prompt_len=16),
        mesh=MeshConfig(data=1), run=RunConfig(steps=steps, workdir=str(tmp_path / "run"), progress=False,
                                               tensorboard=False, diagnostics_k=0))
    return Trainer(exp, tokenizer=tok, reward_fn=reward)


def test_a_run_whose_peers_never_succeed_learns_nothing_and_one_whose_peers_do_learns(tmp_path, tok):
    trainer = peer_run(tmp_path / "a", tok, lambda e, c: 0.0)
    before = jax.tree.map(np.array, trainer.state.params)
    m = trainer.iteration()
    assert m["peers/informed"] == 0 and m["peers/success_rate"] == 0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(trainer.state.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    trainer = peer_run(tmp_path / "b", tok, lambda e, c: 1.0)
    m = trainer.iteration()
    assert m["peers/informed"] == 1 and np.isfinite(m["loss/total"]) and m["loss/total"] > 0


def test_the_trainer_refuses_peers_it_cannot_build(tmp_path, tok):
    with pytest.raises(ValueError, match="reward function"):
        peer_run(tmp_path / "a", tok, None)
    with pytest.raises(ValueError, match="exceed the teacher's .* positions"):
        peer_run(tmp_path / "b", tok, lambda e, c: 1.0, max_len=100_000)
    path = tmp_path / "ids.jsonl"
    path.write_text(json.dumps({"prompt": "1 1 -> 2:"}) + "\n" + json.dumps({"prompt_ids": [5, 6]}) + "\n")
    with pytest.raises(D.DataError, match=r"ids.jsonl:2: teacher.peers needs the prompt as text"):
        peer_run(tmp_path / "c", tok, lambda e, c: 1.0, data=str(path))
