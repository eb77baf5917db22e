"""The evaluation against models with known answers, pass@k against enumeration, the teacher
diagnostics against a float64 NumPy computation from both models' full logits, and EOS ids from
the generation config stopping generation."""

import itertools
import json

import jax
import numpy as np
import pytest
from flax import nnx
from realmodels_helpers import Scripted, hf_reference, script_model, write_records

from opd_jax import environments, rewards, smoke
from opd_jax.data import Example, left_pad, load_examples
from opd_jax.evaluate import evaluate, pass_at_k, write_result
from opd_jax.models import tiny_config
from opd_jax.models.tokenizer import default_eos_ids
from opd_jax.sampling import SamplerConfig, sample
from opd_jax.training.batch import Sequences

VOCAB = 128


@pytest.fixture(scope="module")
def tok():
    return smoke.chat_tokenizer()


@pytest.mark.parametrize("n", [1, 3, 6])
def test_pass_at_k_is_the_chance_that_k_of_n_samples_hold_a_correct_one(n):
    for c, k in itertools.product(range(n + 1), range(1, n + 1)):
        subsets = list(itertools.combinations(range(n), k))  # samples 0..c-1 are the correct ones
        expected = sum(any(i < c for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="need 0 <= c <= n"):
        pass_at_k(n, n + 1, 1)


def _problems(tmp_path, tok, answers):
    recs = [{"messages": [{"role": "user", "content": f"Problem {i}?"}], "answer": a}
            for i, a in enumerate(answers)]
    return load_examples(write_records(tmp_path / "eval.jsonl", recs), tokenizer=tok,
                         max_prompt_len=64)


def test_scripted_model_is_scored_exactly_whatever_the_batch_size(tmp_path, tok):
    """The model always answers ``\\boxed{7}`` then ``<|im_end|>``: right for 2 of 3 problems."""
    model = script_model(tok, "\\boxed{7}", after="\n", end=tok.eos_token_id, vocab=VOCAB)
    graphdef, params = nnx.split(model, nnx.Param)
    examples = _problems(tmp_path, tok, ["7", "8", "7.0"])
    eos = smoke.eos_ids(tok)
    cfg = SamplerConfig(max_new_tokens=16, eos_ids=eos, new_token_buckets=(16,))
    seen = []

    def hook(example, completions, rs):
        seen.append((example.answer, len(completions)))
        return {"correct_count": float(sum(rs))}
    results = [evaluate(graphdef, params, examples, reward_fn=rewards.get("math", tok, eos),
                        cfg=cfg, k=4, batch_size=bs, per_problem={"c": hook}, details=True,
                        tokenizer=tok) for bs in (None, 2, 1)]
    r = results[0]
    assert r["greedy_pass@1"] == r["pass@1"] == r["pass@4"] == pytest.approx(2 / 3)
    assert r["reward"] == r["greedy_reward"] == pytest.approx(2 / 3)
    assert r["mean_length"] == r["greedy_mean_length"] == len("\\boxed{7}") + 1  # EOS counted
    assert r["truncated"] == r["greedy_truncated"] == 0.0
    assert 0 <= r["entropy"] < 1e-6 and r["correct_count"] == pytest.approx(8 / 3)
    assert r["problems"] == 3 and r["k"] == 4
    assert [p["correct"] for p in r["problems_detail"]] == [4, 0, 4]
    assert r["problems_detail"][1]["greedy_text"] == "\\boxed{7}<|im_end|>"
    assert seen[:3] == [("7", 4), ("8", 4), ("7.0", 4)]
    for other in results[1:]:  # padding of the last batch is dropped; streams are per prompt
        assert other == r

    short = evaluate(graphdef, params, examples, reward_fn=rewards.get("math", tok, eos),
                     cfg=cfg.replace(max_new_tokens=5), k=2)
    assert short["truncated"] == short["greedy_truncated"] == 1.0
    assert short["mean_length"] == 5 and short["pass@2"] == 0.0
    with pytest.raises(ValueError, match="k must be >= 1"):
        evaluate(graphdef, params, examples, reward_fn=None, cfg=cfg, k=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        evaluate(graphdef, params, examples, reward_fn=None, cfg=cfg, batch_size=0)


def test_eos_ids_of_the_generation_config_stop_generation(tmp_path, tok):
    """Qwen3 lists two end-of-sequence ids; the second one stops a completion only if every id
    of generation_config.json is used, not just the tokenizer's EOS."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    eos = smoke.eos_ids(tok)  # (<|im_end|>, <|endoftext|>)
    (ckpt / "generation_config.json").write_text(json.dumps({"eos_token_id": list(eos)}))
    # After the prompt's last character: "ab", then <|endoftext|>, then "cd" and "z" forever.
    a, b, c, d, z = tok("abcdz", add_special_tokens=False)["input_ids"]
    prompt = tok("q", add_special_tokens=False)["input_ids"]
    scripted = Scripted(VOCAB, {prompt[0]: a, a: b, b: eos[1], eos[1]: c, c: d}, default=z)
    graphdef, params = nnx.split(scripted, nnx.Param)
    ids = np.asarray([prompt], np.int32)
    mask = np.ones_like(ids, bool)
    run = lambda eos_ids: sample(graphdef, params, ids, mask, jax.random.key(0),  # noqa: E731
                                 cfg=SamplerConfig(max_new_tokens=8, eos_ids=eos_ids,
                                                   temperature=0.0, new_token_buckets=(8,)))
    stopped = run(default_eos_ids(str(ckpt), tok))
    comp = np.asarray(stopped.tokens)[0, 1:][np.asarray(stopped.completion_mask)[0, 1:]]
    assert comp.tolist() == [a, b, eos[1]] and bool(stopped.finished[0])
    unstopped = run((tok.eos_token_id,))  # the tokenizer's EOS only
    assert int(np.asarray(unstopped.completion_mask).sum()) == 8 and not bool(unstopped.finished[0])


def test_a_model_drafting_for_itself_has_every_draft_accepted(tmp_path, tok):
    """``draft_tokens``: the scripted model drafting for itself writes its 10 tokens in blocks of
    ``G + 1`` (the last one cut), every draft accepted; the scores are those of plain sampling."""
    model = script_model(tok, "\\boxed{7}", after="\n", end=tok.eos_token_id, vocab=VOCAB)
    graphdef, params = nnx.split(model, nnx.Param)
    examples = _problems(tmp_path, tok, ["7", "8", "7.0"])
    eos = smoke.eos_ids(tok)
    cfg = SamplerConfig(max_new_tokens=16, eos_ids=eos, new_token_buckets=(16,))
    reward = rewards.get("math", tok, eos)
    plain = evaluate(graphdef, params, examples, reward_fn=reward, cfg=cfg, k=2)
    for gamma in (3, 4):
        r = evaluate(graphdef, params, examples, reward_fn=reward, cfg=cfg, k=2, batch_size=2,
                     target=(graphdef, params), draft_tokens=gamma)
        assert r["acceptance_rate"] == 1.0 and r["acceptance_length"] == pytest.approx(10 / -(-10 // (gamma + 1)))
        assert {k: v for k, v in r.items() if not k.startswith("acceptance")} == plain
    with pytest.raises(ValueError, match="needs target"):
        evaluate(graphdef, params, examples, reward_fn=reward, cfg=cfg, k=2, draft_tokens=2)
    private = [Example(prompt_ids=e.prompt_ids, teacher_prompt_ids=tuple(e.prompt_ids) + (1,), answer=e.answer)
               for e in examples]
    with pytest.raises(ValueError, match="these records give the teacher other prompts"):
        evaluate(graphdef, params, private, reward_fn=reward, cfg=cfg, k=2, target=(graphdef, params),
                 draft_tokens=2)


def _np_log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_teacher_diagnostics_match_numpy_on_full_logits(tmp_path):
    """Exact reverse KL, entropies, top-1 agreement and top-k overlap of the evaluation's own
    samples, recomputed in float64 from both models' full forward passes; the teacher reads a
    privileged prompt for some problems."""
    s_model = hf_reference.random_model(tiny_config("qwen3", vocab_size=VOCAB, hidden_size=32,
                                                    intermediate_size=48, num_heads=4,
                                                    num_kv_heads=2, head_dim=8), seed=1)
    t_model = hf_reference.random_model(tiny_config("qwen3", vocab_size=VOCAB, hidden_size=48,
                                                    intermediate_size=64, head_dim=12), seed=2)
    rng = np.random.default_rng(0)
    ids = lambda n: tuple(rng.integers(3, VOCAB, n).tolist())  # noqa: E731
    examples = [Example(ids(n), answer="1", teacher_prompt_ids=ids(n + 3) if n % 2 else None)
                for n in (3, 5, 4)]
    k, temp, top = 2, 0.9, 4
    cfg = SamplerConfig(max_new_tokens=6, eos_ids=(1,), new_token_buckets=(8,))
    sg, sp = nnx.split(s_model, nnx.Param)
    tg, tp = nnx.split(t_model, nnx.Param)
    r = evaluate(sg, sp, examples, reward_fn=lambda e, c: 0.0, cfg=cfg, k=k, batch_size=2,
                 teacher=(tg, tp), temperature=temp, diagnostics_k=top, chunk_size=4, seed=3)

    # The same samples: the evaluation's documented protocol (key(seed), stream = problem index).
    width = max(len(e.prompt_ids) for e in examples)
    p, m = left_pad([e.prompt_ids for e in examples], width, 0)
    roll = sample(sg, sp, p, m, jax.random.key(3), row_ids=np.arange(3, dtype=np.int32),
                  cfg=cfg.replace(num_samples=k, prompt_buckets=(width,)))
    P = roll.prompt_len
    tokens, mask = np.asarray(roll.tokens), np.asarray(roll.mask)
    comp, cmask = tokens[:, P:], mask[:, P:]
    n = comp.shape[1]
    seq = Sequences.from_left_padded(tokens, mask)
    logits = lambda model, t, m, s: hf_reference.jax_logits(  # noqa: E731
        model, t, m, np.asarray(s.positions))[:, -n - 1:-1]
    s_logits = logits(s_model, tokens, mask, seq)
    t_prompts = [e.teacher_prompt_ids or e.prompt_ids for e in examples]
    tw = max(map(len, t_prompts))
    tpad, tmask = left_pad(t_prompts, tw, 0)
    t_tokens = np.concatenate([np.repeat(tpad, k, 0), comp], 1)
    t_mask = np.concatenate([np.repeat(tmask, k, 0), cmask], 1)
    t_seq = Sequences.from_left_padded(t_tokens, t_mask)
    t_logits = logits(t_model, t_tokens, t_mask, t_seq)
    ls, lt = _np_log_softmax(s_logits / temp), _np_log_softmax(t_logits / temp)
    ps, pt = np.exp(ls), np.exp(lt)
    sel = cmask
    top_s = np.argsort(-ls, -1)[..., :top]
    top_t = np.argsort(-lt, -1)[..., :top]
    overlap = np.asarray([[len(set(a) & set(b)) / top for a, b in zip(ra, rb)]
                          for ra, rb in zip(top_s, top_t)])
    h_s, h_t = -(ps * ls).sum(-1), -(pt * lt).sum(-1)
    expected = {
        "reverse_kl": (ps * (ls - lt)).sum(-1)[sel].mean(),
        "student_entropy": h_s[sel].mean(), "teacher_entropy": h_t[sel].mean(),
        "entropy_gap": (h_t - h_s)[sel].mean(), "entropy_gap_abs": np.abs(h_t - h_s)[sel].mean(),
        "top1_agree": (ls.argmax(-1) == lt.argmax(-1))[sel].mean(),
        "overlap_ratio": overlap[sel].mean(),
    }
    for name, value in expected.items():
        assert r[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    assert r["reverse_kl"] > 0.01  # the two models differ: the check is not vacuous
    assert r["mean_length"] == pytest.approx(cmask.sum() / (3 * k))


def test_write_result_is_atomic_json(tmp_path):
    path = tmp_path / "eval" / "12.json"
    write_result({"pass@1": 0.5}, str(path))
    write_result({"pass@1": 0.75}, str(path))
    assert json.loads(path.read_text()) == {"pass@1": 0.75}
    assert [p.name for p in path.parent.iterdir()] == ["12.json"]


def _episode_model():
    return hf_reference.random_model(tiny_config("qwen3", vocab_size=VOCAB, hidden_size=32,
                                                 intermediate_size=48, num_heads=4,
                                                 num_kv_heads=2, head_dim=8), seed=1)


def _greedy_turn(graphdef, params, cfg, prompt):
    p, m = left_pad([prompt], len(prompt), cfg.pad_id)
    out = sample(graphdef, params, p, m, jax.random.key(0), cfg=cfg.replace(temperature=0.0))
    toks = np.asarray(out.tokens)[0, out.prompt_len:][np.asarray(out.completion_mask)[0, out.prompt_len:]]
    return tuple(int(t) for t in toks), bool(np.asarray(out.finished)[0])


def test_multi_turn_episodes_are_scored_on_the_models_own_tokens_of_every_turn():
    """With turns=2 the reward reads the greedy episode's last turn: the greedy turn 2 sampled
    after the environment's turn where turn 1 ended with an EOS and the record has one, else turn
    1; the lengths count both turns. Rebuilt here call by call with the sampler."""
    model = _episode_model()
    rng = np.random.default_rng(0)
    ids = lambda n: tuple(rng.integers(60, VOCAB, n).tolist())  # noqa: E731
    examples = [Example(ids(n), answer="1", env_turns_ids=(ids(2),) if n != 4 else ())
                for n in (3, 5, 4, 6)]
    eos = tuple(range(3, 60))  # about half the vocabulary ends a turn
    cfg = SamplerConfig(max_new_tokens=6, eos_ids=eos, new_token_buckets=(8,))
    graphdef, params = nnx.split(model, nnx.Param)
    seen = {}

    def reward(e, completion):
        seen.setdefault(e.prompt_ids, []).append(tuple(int(t) for t in completion))
        return 0.0
    r = evaluate(graphdef, params, examples, reward_fn=reward, cfg=cfg, k=2, batch_size=4, turns=2,
                 seed=3)

    def turn(prompt):
        return _greedy_turn(graphdef, params, cfg, prompt)
    went_on, lengths = 0, []
    for e in examples:
        first, ended = turn(e.prompt_ids)
        want, length = first, len(first)
        if ended and e.env_turns_ids:
            second, _ = turn(e.prompt_ids + first + e.env_turns_ids[0])
            want, length, went_on = second, length + len(second), went_on + 1
        # first the first turns alone (greedy, then the k = 2 draws), then the episodes likewise
        assert seen[e.prompt_ids][0] == first and seen[e.prompt_ids][3] == want
        assert len(seen[e.prompt_ids]) == 6
        lengths.append(length)
    assert went_on >= 1 and 1.0 <= r["turns"] <= 2.0
    assert r["greedy_mean_length"] == pytest.approx(np.mean(lengths))


def test_a_retry_environment_asks_again_after_a_wrong_first_answer():
    """turns=3 with the retry environment: a greedy episode goes on (after the retry message)
    exactly when its last turn ended with an EOS and the reward of that turn alone was 0, and the
    evaluation's reward reads its last turn, turn<j>'s the last within the first j turns; rebuilt
    here call by call."""
    model = _episode_model()
    rng = np.random.default_rng(1)
    examples = [Example(tuple(rng.integers(60, VOCAB, n).tolist()), answer="1") for n in (3, 5, 4, 6, 2, 7)]
    eos = tuple(range(3, 60))
    cfg = SamplerConfig(max_new_tokens=6, eos_ids=eos, new_token_buckets=(8,))
    graphdef, params = nnx.split(model, nnx.Param)
    message = (40, 41)

    def right(e, ids):  # a "verifier" of one turn: its first token is even
        return float(len(ids) > 0 and int(ids[0]) % 2 == 0)
    seen = {}

    def reward(e, completion):
        seen.setdefault(e.prompt_ids, []).append(tuple(int(t) for t in completion))
        return right(e, completion)
    env = environments.Retry(right, message=message)
    responder = lambda exs: environments.responder(env, exs, None, VOCAB)  # noqa: E731
    r = evaluate(graphdef, params, examples, reward_fn=reward, cfg=cfg, k=2, batch_size=3, turns=3,
                 seed=2, responder=responder)
    retried, within = 0, {1: [], 2: [], 3: []}  # the greedy rewards of the episodes cut after j turns
    for e in examples:
        episode = e.prompt_ids
        for t in range(3):
            turn, ended = _greedy_turn(graphdef, params, cfg, episode)
            within[t + 1].append(right(e, turn))
            if t == 2 or not ended or right(e, turn):
                break
            episode, retried = episode + turn + message, retried + 1
        for j in range(t + 2, 4):  # an episode over before turn j is cut at its last answer
            within[j].append(right(e, turn))
        # calls per prompt: the cuts after 1 and 2 turns (greedy, then the k = 2 draws), then the episodes
        assert seen[e.prompt_ids][6] == turn and len(seen[e.prompt_ids]) == 9
    assert retried >= 2 and 1.0 <= r["turns"] <= 3.0 and within[1] != within[2]
    assert r["greedy_pass@1"] == np.mean(within[3])
    assert r["turn1_greedy_pass@1"] == np.mean(within[1]) and r["turn2_greedy_pass@1"] == np.mean(within[2])
    assert "turn3_pass@1" not in r  # the whole episode's is pass@1
    assert r["pass@1"] >= r["turn2_pass@1"] >= r["turn1_pass@1"]  # retrying only ever adds
