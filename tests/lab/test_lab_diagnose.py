"""The lab's diagnostics against scripted models whose answers and distributions are known, and
the prefix classification against a search that tries every completion of a prefix."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from opd_jax.data import load_examples
from opd_jax.lab import countdown as C
from opd_jax.lab import data as L
from opd_jax.lab import diagnose as G
from opd_jax.lab import tokenizer as T
from opd_jax.models import KVCache, load_tokenizer, tiny_config

V = T.vocab_size()


class PositionScript(nnx.Module):
    """Logits ``margin * onehot(script[position - start])``: the same answer to every prompt of
    length ``start``, near-deterministic for a large margin, a known soft distribution else."""

    def __init__(self, script: list[int], start: int, margin: float):
        self.cfg = tiny_config("llama", vocab_size=V, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=2)
        table = np.zeros((64, V), np.float32)
        for n, t in enumerate(script + [T.EOS_ID]):
            table[start - 1 + n, t] = margin  # position start - 1 (the prompt's last) predicts token 0
        self.table = nnx.Param(jnp.asarray(table))

    def hidden(self, tokens, positions, *, mask=None, cache: KVCache | None = None):
        mask = jnp.ones(tokens.shape, jnp.bool_) if mask is None else mask
        if cache is not None:
            valid = jax.lax.dynamic_update_slice(cache.valid, mask, (jnp.int32(0), cache.index))
            cache = cache.replace(valid=valid, index=cache.index + tokens.shape[1])
        return jax.nn.one_hot(positions, 64, dtype=jnp.float32), cache

    def __call__(self, tokens, positions, *, mask=None, cache=None):
        h, cache = self.hidden(tokens, positions, mask=mask, cache=cache)
        return self.logits(h), cache

    def logits(self, h):
        return h @ self.table[...]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(T.save(tmp_path_factory.mktemp("tok")))


def _ids(tok, s):
    return tok(s, add_special_tokens=False)["input_ids"]


def _examples(tok, tmp_path, problems):
    path = str(tmp_path / "d.jsonl")
    L.write_records(path, [L.record(p, tok) for p in problems])
    return load_examples(path, tokenizer=tok, max_prompt_len=32)


def _completable(problem, steps) -> bool:
    """Whether some steps appended to ``steps`` make an answer ``countdown.check`` accepts."""
    if C.check(problem, steps) is None:
        return True
    if len(steps) >= len(problem.numbers) - 1:
        return False
    values = list(problem.numbers) + [s.result for s in steps]
    for a, b in itertools.permutations(values, 2):
        for op in C.OPS:
            r = C.apply(a, op, b)
            if r is not None and _completable(problem, steps + [C.Step(a, op, b, r)]):
                return True
    return False


def _reachable(values: list[int]) -> set[int]:
    out = set()
    for a, b in itertools.permutations(range(len(values)), 2):
        for op in C.OPS:
            r = C.apply(values[a], op, values[b])
            if r is not None:
                rest = [v for i, v in enumerate(values) if i not in (a, b)]
                out |= {r} | _reachable(rest + [r])
    return out


@pytest.mark.parametrize("numbers", [(9, 8, 5), (3, 7, 12), (4, 4, 6), (2, 3, 5, 7)])
def test_prefix_kind_agrees_with_a_search_over_every_completion(numbers):
    rng = np.random.default_rng(0)
    values = sorted(_reachable(list(numbers)) - set(numbers))
    for target in rng.choice(values, 12):
        problem = C.Problem(numbers, int(target))
        sols = C.solutions(problem)
        for a, b in itertools.permutations(numbers, 2):
            for op in C.OPS:
                r = C.apply(a, op, b)
                if r is None:
                    continue
                step = C.Step(a, op, b, r)
                kind = G.prefix_kind(problem, [step.text("forward")], "forward", sols)
                if C.check(problem, [step]) is None:
                    assert kind == "solved"
                else:
                    assert kind == ("on_path" if _completable(problem, [step]) else "dead_end"), step
    problem = C.Problem((9, 8, 5), 67)
    assert G.prefix_kind(problem, ["9*8=71"], "forward") == "invalid"  # wrong arithmetic
    assert G.prefix_kind(problem, ["9*9=81"], "forward") == "invalid"  # 9 is given once
    assert G.prefix_kind(problem, ["9*8"], "forward") == "unparsable"
    assert G.prefix_kind(problem, [], "forward") == "on_path"
    assert G.prefix_kind(problem, ["67=72-5"], "backward") == "on_path"  # ends 9*8=72 72-5=67
    assert G.prefix_kind(problem, ["67=70-3"], "backward") == "dead_end"
    assert G.prefix_kind(problem, ["67=72-4"], "backward") == "invalid"


def test_token_roles_name_every_character():
    assert G.token_roles("9*8=72 72-5=67", "forward") == (
        ["operand", "operator", "operand", "equals", "result", "result", "separator"]
        + ["operand", "operand", "operator", "operand", "equals", "result", "result"])
    assert G.token_roles("67=72-5", "backward") == ["result", "result", "equals", "operand", "operand",
                                                    "operator", "operand"]
    assert G.token_roles("9*8 x", "forward") == ["other"] * 3 + ["separator", "other"]


def test_continuations_count_prefix_kinds_and_finishes(tok, tmp_path):
    # One scripted answer for three problems: on a path for 67, the answer itself for 72, a dead
    # end for 13 (72 and 5 make neither).
    problems = [C.Problem((9, 8, 5), t) for t in (67, 72, 13)]
    examples = _examples(tok, tmp_path, problems)
    start = len(examples[0].prompt_ids)
    assert all(len(e.prompt_ids) == start for e in examples)
    script = nnx.split(PositionScript(_ids(tok, "9*8=72 72-5=67"), start, 40.0), nnx.Param)
    silent = nnx.split(PositionScript([], start, 40.0), nnx.Param)  # answers nothing: EOS
    out = G.continuations(script, {"script": script, "silent": silent}, examples, tok, depth=1, k=3)
    assert out["prefixes"] == 9 and out["on_path_prefixes"] == 3
    assert out["kinds"] == pytest.approx({"dead_end": 1 / 3, "on_path": 1 / 3, "solved": 1 / 3})
    assert out["finished_correctly"] == {"script": 1.0, "silent": 0.0}
    out = G.continuations(script, {}, examples, tok, depth=3, k=1)
    assert out["kinds"] == {"ended": 1.0}


def test_token_table_matches_closed_forms(tok, tmp_path):
    """A near-deterministic student against a soft teacher with known logits: per token, the
    reverse KL is ``-log q(token)``, the teacher's entropy that of a one-logit softmax."""
    problems = [C.Problem((9, 8, 5), 67)]
    examples = _examples(tok, tmp_path, problems)
    start = len(examples[0].prompt_ids)
    answer = "9*8=72 72-5=67"
    student = nnx.split(PositionScript(_ids(tok, answer), start, 60.0), nnx.Param)
    other = _ids(tok, "8*9=72 67=72-5")  # the teacher's favourite token at each position
    margin = 1.5
    teacher = nnx.split(PositionScript(other, start, margin), nnx.Param)
    out = G.token_table(student, teacher, examples, tok, k=2)
    ids = _ids(tok, answer) + [T.EOS_ID]
    favourite = other + [T.EOS_ID]
    z = np.exp(margin) + V - 1
    q = np.array([(np.exp(margin) if t == f else 1.0) / z for t, f in zip(ids, favourite)])
    h_teacher = -(np.exp(margin) / z * (margin - np.log(z)) + (V - 1) / z * -np.log(z))
    np.testing.assert_allclose(out["overall"]["all"]["reverse_kl"], np.mean(-np.log(q)), rtol=1e-5)
    np.testing.assert_allclose(out["overall"]["all"]["advantage"], np.mean(np.log(q)), rtol=1e-5)
    np.testing.assert_allclose(out["overall"]["all"]["teacher_entropy"], h_teacher, rtol=1e-5)
    np.testing.assert_allclose(out["overall"]["all"]["teacher_confidence"], np.exp(margin) / z, rtol=1e-5)
    assert out["overall"]["all"]["student_entropy"] < 1e-6
    assert out["overall"]["all"]["tokens"] == 2 * len(ids)
    np.testing.assert_allclose(out["position"]["reverse_kl"][:len(ids)], -np.log(q), rtol=1e-5)
    roles = G.token_roles(answer, "forward") + ["eos"]
    for role in set(roles):
        sel = [n for n, r in enumerate(roles) if r == role]
        assert out["role"][role]["tokens"] == 2 * len(sel)
        np.testing.assert_allclose(out["role"][role]["reverse_kl"], np.mean(-np.log(q[sel])), rtol=1e-5)
    # Before the separator every token is on a path; the second step follows an on-path first step,
    # and the EOS follows a solved answer.
    assert out["state"]["on_path"]["tokens"] == 2 * (len(ids) - 1)
    assert out["state"]["solved"]["tokens"] == 2


def test_written_results_tell_computing_from_writing_the_target(tok, tmp_path):
    """After the student's operands ``9*8=``, one writer computes (72), another writes the target
    (67); after ``9*8=72 72-5=`` both write 67, which is right there."""
    examples = _examples(tok, tmp_path, [C.Problem((9, 8, 5), 67), C.Problem((9, 8, 5), 13)])
    start = len(examples[0].prompt_ids)
    student = nnx.split(PositionScript(_ids(tok, "9*8=72 72-5=67"), start, 40.0), nnx.Param)
    aims = nnx.split(PositionScript(_ids(tok, "9*8=67 72-5=67"), start, 40.0), nnx.Param)
    writers = {"computes": student, "aims": aims}
    first = G.written_results(student, writers, examples, tok, step=0, k=2)
    assert first["computes"] == {"on_path": {"right": 1.0, "target": 0.0, "other": 0.0, "n": 4}}
    # For 13, 67 is neither 72 nor the target: "other"; for 67 it is the target.
    assert first["aims"] == {"on_path": {"right": 0.0, "target": 0.5, "other": 0.5, "n": 4}}
    second = G.written_results(student, writers, examples, tok, step=1, k=1)
    for name in writers:
        assert second[name] == {"dead_end": {"right": 1.0, "target": 0.0, "other": 0.0, "n": 1},
                                "on_path": {"right": 1.0, "target": 0.0, "other": 0.0, "n": 1}}
