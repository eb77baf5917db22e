"""The derived record files (backward format, privileged contexts, UniSD's extra teachers, answers
in either format), checked by the verifier and through the trainer's data loader; the answer
format that accepts either writing; the zoo's models that train on them."""

import json
import os

import numpy as np
import pytest

from opd_jax.data import load_examples
from opd_jax.lab import countdown as C
from opd_jax.lab import data as L
from opd_jax.lab import dataset, variants, zoo
from opd_jax.models import load_tokenizer

PROBLEM = C.Problem((9, 8, 5), 67)
STEPS = [C.Step(9, "*", 8, 72), C.Step(72, "-", 5, 67)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("variants") / "data")
    dataset.build(out, difficulty=C.Difficulty(count=3, max_number=9, max_target=40), train=60, test=6,
                  solutions="all")
    return out


def _read(path):
    return [json.loads(line) for line in open(path)]


def _load(data_dir, name):
    tok = load_tokenizer(os.path.join(data_dir, "tokenizer"))
    return tok, load_examples(variants.ensure(data_dir, name), tokenizer=tok,
                              max_prompt_len=variants.MAX_CONTEXT_PROMPT_LEN)


def test_answers_in_either_format():
    forward, backward = C.write(STEPS, "forward"), C.write(STEPS, "backward")
    for text in (forward, backward):
        assert L.verify_answer(PROBLEM, text, L.EITHER) and L.parse_answer(text, L.EITHER) == STEPS
    assert L.verify_answer(PROBLEM, forward, "forward") and not L.verify_answer(PROBLEM, backward, "forward")
    mixed = "9*8=72 67=72-5"  # one step each way: neither writing
    assert L.parse_answer(mixed, L.EITHER) is None and not L.verify_answer(PROBLEM, mixed, L.EITHER)
    with pytest.raises(ValueError, match="unknown answer format"):
        L.parse_answer(forward, "sideways")
    with pytest.raises(ValueError, match="answer format must be one of"):
        L.answer_problem({"numbers": [9, 8, 5], "target": 67, "format": "sideways"})
    assert L.follows_rule(STEPS, "multiply_first") and not L.follows_rule(STEPS, "no_subtraction")
    with pytest.raises(ValueError, match="unknown rule"):
        L.follows_rule(STEPS, "be_nice")


def test_backward_records_hold_the_same_solutions(data_dir):
    train = _read(os.path.join(data_dir, "train.jsonl"))
    _, examples = _load(data_dir, variants.BACKWARD)
    back = _read(os.path.join(data_dir, variants.BACKWARD))
    assert len(back) == len(examples) == len(train)
    for f, b in zip(train, back):
        problem, _ = L.answer_problem(f["answer"])
        assert b["answer"]["format"] == "backward" and b["prompt"] == f["prompt"]
        assert C.verify(problem, b["completion"], "backward")
        assert C.parse(b["completion"], "backward") == C.parse(f["completion"], "forward")


def test_context_records_put_a_rule_or_a_hint_before_the_problem(data_dir):
    tok, examples = _load(data_dir, variants.CONTEXTS)
    records = _read(os.path.join(data_dir, variants.CONTEXTS))
    kinds = {"plain": 0, "rule": 0, "hint": 0}
    eligible = 0  # records whose solution follows some rule: a third of them get one
    for r, e in zip(records, examples):
        problem, fmt = L.answer_problem(r["answer"])
        steps = C.parse(r["completion"], fmt)
        eligible += any(L.follows_rule(steps, n) for n in L.RULES)
        assert C.check(problem, steps) is None and r["prompt"].endswith(L.prompt(problem))
        assert list(e.prompt_ids) == tok(r["prompt"], add_special_tokens=False)["input_ids"]
        if r["prompt"] == L.prompt(problem):
            kinds["plain"] += 1
        elif r["prompt"].startswith("rule"):
            kinds["rule"] += 1
            name = next(n for n, rule in L.RULES.items() if r["prompt"].startswith(rule.text))
            assert L.follows_rule(steps, name)
        else:
            kinds["hint"] += 1
            assert r["prompt"] == L.teacher_prompt(problem, hint=r["completion"])
    assert kinds["plain"] > len(records) / 6 and kinds["hint"] > len(records) / 6, kinds
    assert eligible / 6 < kinds["rule"] < eligible / 2, (kinds, eligible)


def test_self_distillation_records(data_dir):
    problems = {L.answer_problem(r["answer"])[0].key for r in _read(os.path.join(data_dir, "train.jsonl"))}
    for rule in L.RULES:
        _, examples = _load(data_dir, f"{variants.RULE_PREFIX}{rule}.jsonl")
        for e in examples:
            problem, _ = L.answer_problem(e.answer)
            assert e.record["teacher_prompt"] == L.teacher_prompt(problem, rule=rule)
            assert any(L.follows_rule(list(s), rule) for s in C.solutions(problem))
        assert 0 < len(examples) <= len(problems)
    _, hints = _load(data_dir, variants.HINT)
    assert len(hints) == len(problems)
    for e in hints:
        problem, _ = L.answer_problem(e.answer)
        hint = e.record["teacher_prompt"].removeprefix("hint ").split(" | ")[0]
        assert C.verify(problem, hint, "forward") and e.completion_ids is None
    tok, unisd = _load(data_dir, variants.UNISD)
    decode = lambda ids: tok.decode(list(ids))  # noqa: E731
    for e in unisd:
        problem, _ = L.answer_problem(e.answer)
        aux = e.record["aux_teacher_prompts_ids"]
        assert len(aux) == variants.AUX_CONTEXTS
        for ids in aux + [list(e.teacher_prompt_ids)]:
            assert C.verify(problem, decode(ids).removeprefix("hint ").split(" | ")[0], "forward")
        bad = decode(e.record["bad_teacher_prompt_ids"]).removeprefix("hint ").split(" | ")[0]
        assert C.parse(bad, "forward") is not None and not C.verify(problem, bad, "forward")


def test_either_format_test_records_and_the_files_are_written_once(data_dir):
    path = variants.ensure(data_dir, variants.TEST_EITHER)
    test = _read(os.path.join(data_dir, "test.jsonl"))
    either = _read(path)
    assert [r["answer"]["format"] for r in either] == [L.EITHER] * len(test)
    assert [r["prompt_ids"] for r in either] == [r["prompt_ids"] for r in test]
    stamp = os.stat(path).st_mtime_ns
    assert variants.ensure(data_dir, variants.TEST_EITHER) == path and os.stat(path).st_mtime_ns == stamp
    assert variants.ensure(data_dir, "train.jsonl").endswith("train.jsonl")
    with pytest.raises(ValueError, match="unknown derived record file"):
        variants.ensure(data_dir, "train_sideways.jsonl")
    with pytest.raises(FileNotFoundError, match="build the lab's data directory"):
        variants.ensure(os.path.join(data_dir, "nowhere"), "train.jsonl")
    assert not [f for f in os.listdir(data_dir) if f.endswith(".tmp")]


def test_the_zoo_derives_the_extra_models_from_its_recipes():
    for setting in zoo.SETTINGS.values():
        teacher, back = setting.recipes["teacher"], setting.recipes["teacher_backward"]
        assert back.records == variants.BACKWARD and {**vars(back), "records": "train.jsonl"} == vars(teacher)
        ctx = setting.recipes["contextual"]
        assert ctx.records == variants.CONTEXTS
        assert zoo.eval_records(back.records) == variants.TEST_EITHER
        assert zoo.eval_records(ctx.records) == "test.jsonl"
    exp = zoo.experiment(zoo.SETTINGS["smoke"].recipes["contextual"], "/d", "/w")
    assert exp.data.path == os.path.join("/d", variants.CONTEXTS)
    assert exp.data.max_prompt_len == variants.MAX_CONTEXT_PROMPT_LEN
    assert np.all([zoo.experiment(r, "/d", "/w").data.max_prompt_len == zoo.MAX_PROMPT_LEN
                   for n, r in zoo.SETTINGS["default"].recipes.items() if r.records == "train.jsonl"])


def test_coverage_records_keep_the_training_records_and_continue_student_like_steps(data_dir):
    train = _read(os.path.join(data_dir, "train.jsonl"))
    tok, examples = _load(data_dir, variants.COVERAGE)
    records = _read(os.path.join(data_dir, variants.COVERAGE))
    problems = {L.answer_problem(r["answer"])[0].key for r in train}
    assert records[:len(train)] == train and len(records) == len(examples) == len(train) + len(problems)
    wrong = 0
    for r in records[len(train):]:
        problem, fmt = L.answer_problem(r["answer"])
        head = r["prompt"].removeprefix(L.prompt(problem))
        first = C.parse(head.strip(), fmt)
        assert problem.key in problems and len(first) == 1, r
        wrong += C.apply(first[0].a, first[0].op, first[0].b) != first[0].result
        rest = C.parse(r["completion"], fmt) if r["completion"] else []
        # every step of the continuation computes, whatever the first step did
        assert all(C.apply(s.a, s.op, s.b) == s.result for s in rest), r
    assert 0 < wrong < len(records) - len(train)


def test_the_coverage_teacher_fine_tunes_the_teacher(tmp_path):
    setting = zoo.SETTINGS["smoke"]
    teacher, cov = setting.recipes["teacher"], setting.recipes["teacher_coverage"]
    assert cov.init == "teacher" and cov.records == variants.COVERAGE and cov.layers == teacher.layers
    exp = zoo.experiment(cov, "/d", "/w", models="/m")
    assert exp.student.path == os.path.join("/m", "teacher") and exp.data.path == os.path.join("/d", variants.COVERAGE)
    models, data = str(tmp_path / "models"), str(tmp_path / "data")
    manifest = zoo.build("teacher_coverage", setting, models=models, data_dir=data,
                         workdir=str(tmp_path / "zoo"), log=None)
    assert os.path.exists(os.path.join(models, "teacher", "manifest.json"))  # built first, as its start
    assert manifest["init"] == {"name": "teacher",
                                "model_sha256": zoo.sha256(os.path.join(models, "teacher", "model.safetensors"))}
    assert manifest["data"]["train_sha256"] == zoo.sha256(os.path.join(data, variants.COVERAGE))


def test_text_records_read_by_the_numbers_tokenizer_give_the_same_text(data_dir):
    """The numbers tokenizer (another "model family"): the same text, numbers from 10 to 999 as
    one token, the lab's special ids; the text-only records keep everything but the ids."""
    from opd_jax.lab import tokenizer as T
    num = T.build_numbers()
    assert len(num) == T.vocab_size("numbers") and (num.pad_token_id, num.eos_token_id) == (T.PAD_ID, T.EOS_ID)
    assert num.convert_ids_to_tokens(num("12+30=42 1234", add_special_tokens=False)["input_ids"]) == [
        "12", "+", "30", "=", "42", " ", "123", "4"]
    plain, text = _read(os.path.join(data_dir, "train.jsonl")), _read(variants.ensure(data_dir, variants.TRAIN_TEXT))
    assert text == [{k: v for k, v in r.items() if not k.endswith("_ids")} for r in plain]
    examples = load_examples(variants.ensure(data_dir, variants.TRAIN_TEXT), tokenizer=num, max_prompt_len=24)
    for e, r in zip(examples, plain):
        assert num.decode(e.prompt_ids) == r["prompt"]
        assert num.decode(e.completion_ids[:-1]) == r["completion"] and e.completion_ids[-1] == T.EOS_ID
        assert len(e.completion_ids) <= len(r["completion_ids"])
    assert zoo.eval_records(variants.TRAIN_TEXT) == variants.TEST_TEXT
    for setting in zoo.SETTINGS.values():
        r = setting.recipes["strong_numbers"]
        assert r.tokenizer == "numbers" and r.records == variants.TRAIN_TEXT
        assert zoo.model_spec(r).config.vocab_size == T.vocab_size("numbers")


@pytest.mark.parametrize("name, depths", [(variants.RETRY, (1,)), (variants.RETRY2, (1, 2))])
def test_retry_records_are_wrong_answers_the_retries_and_a_solution(data_dir, name, depths):
    """Every training record, then per problem one retry record per depth (train_retry: one wrong
    answer; train_retry2: one, and two): its prompt is the problem, then answers the verifier
    rejects, each followed by EOS and the environment's RETRY (what an episode's later turn
    reads); its completion a correct solution."""
    from opd_jax.lab.tokenizer import EOS_ID
    tok, examples = _load(data_dir, name)
    train = _read(os.path.join(data_dir, "train.jsonl"))
    records = _read(variants.ensure(data_dir, name))
    assert records[:len(train)] == train and len(examples) == len(records)
    problems = {L.answer_problem(r["answer"])[0].key for r in train}
    retry = examples[len(train):]
    assert len(retry) == len(depths) * len(problems)
    message = tok(L.RETRY, add_special_tokens=False)["input_ids"]
    seen = {d: set() for d in depths}
    for e in retry:
        problem, fmt = L.answer_problem(e.answer)
        head = tok(L.prompt(problem), add_special_tokens=False)["input_ids"]
        assert list(e.prompt_ids[:len(head)]) == head
        rest, unit, answers = list(e.prompt_ids[len(head):]), [EOS_ID] + message, []
        while rest:  # each answer ends its turn (EOS), then the environment's message follows
            cut = rest.index(EOS_ID)
            assert rest[cut:cut + len(unit)] == unit
            answers.append(tok.decode(rest[:cut]))
            rest = rest[cut + len(unit):]
        assert all(not L.verify_answer(problem, a, fmt) for a in answers)  # wrong answers
        assert L.verify_answer(problem, L.completion_text(tok, e.completion_ids), fmt)
        assert e.completion_ids[-1] == EOS_ID
        seen[len(answers)].add(problem.key)
    assert all(keys == problems for keys in seen.values())  # every problem at every depth


def test_the_lab_retry_environment_asks_again_after_a_wrong_answer(data_dir):
    import opd_jax.environments as EN
    tok = load_tokenizer(os.path.join(data_dir, "tokenizer"))
    env = L.retry_environment(tokenizer=tok)
    assert isinstance(env, EN.Retry)
    ex = load_examples(os.path.join(data_dir, "test.jsonl"), tokenizer=tok, max_prompt_len=24)[0]
    problem, _ = L.answer_problem(ex.answer)
    right = tok(C.write(C.solutions(problem)[0], "forward"), add_special_tokens=False)["input_ids"] + [2]
    assert env.reply(ex, [right]) is None
    assert tok.decode(env.reply(ex, [right[:1] + [2]])) == L.RETRY
    assert EN.get("opd_jax.lab.data:retry_environment", tokenizer=tok).message == env.message
    for setting in zoo.SETTINGS.values():
        for suffix, records in (("", variants.RETRY), ("2", variants.RETRY2)):
            t, w = setting.recipes[f"teacher_retry{suffix}"], setting.recipes[f"weak_retry{suffix}"]
            assert (t.init, w.init, t.records, w.records) == ("teacher", "weak", records, records)
