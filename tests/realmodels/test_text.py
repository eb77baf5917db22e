"""Records become token ids as the tokenizer itself would make them: chats through its own chat
template (``apply_chat_template``'s ids are the oracle), privileged teacher chats through the
teacher's tokenizer, text completions ended with EOS; the checkpoint's generation config gives
every EOS id; two tokenizers that differ are refused naming the first differing token; bad
records are refused naming the line."""

import json

import pytest
from realmodels_helpers import write_records
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from opd_jax import smoke
from opd_jax.data import DataError, load_examples, template_kwargs
from opd_jax.models.tokenizer import (TokenizerMismatch, check_same_tokenizer, default_eos_ids,
                                      first_difference, generation_eos_ids)

CHAT = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def tok():
    return smoke.chat_tokenizer()


def _apply(tokenizer, messages, **kw):
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _load(tmp_path, records, tok, **kw):
    return load_examples(write_records(tmp_path / "d.jsonl", records), tokenizer=tok,
                         max_prompt_len=kw.pop("max_prompt_len", 256), **kw)


@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": False}, {"enable_thinking": True}])
def test_messages_equal_apply_chat_template_ids(tmp_path, tok, kwargs):
    (e,) = _load(tmp_path, [{"messages": CHAT, "answer": "4"}], tok, template_kwargs=kwargs)
    assert list(e.prompt_ids) == _apply(tok, CHAT, **kwargs)
    empty_thoughts = "<think>\n\n</think>\n\n" if kwargs.get("enable_thinking") is False else ""
    assert tok.decode(list(e.prompt_ids)).endswith("<|im_start|>assistant\n" + empty_thoughts)
    assert e.completion_ids is None and e.answer == "4"


def test_text_prompt_with_chat_template_is_one_user_turn(tmp_path, tok):
    recs = [{"prompt": "What is 2 + 2?"}]
    (templated,) = _load(tmp_path, recs, tok, chat_template=True)
    assert list(templated.prompt_ids) == _apply(tok, [{"role": "user", "content": "What is 2 + 2?"}])
    (plain,) = _load(tmp_path, recs, tok)
    assert list(plain.prompt_ids) == tok("What is 2 + 2?")["input_ids"]


def test_plain_prompts_follow_the_tokenizers_conventions_completions_get_eos_only(tmp_path):
    """A tokenizer that adds BOS (as Llama's does) adds it to a text prompt, not to a completion;
    a completion gets the EOS token once, even if its text already ends with it."""
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "hello", "world"])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    llama_like = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>",
                                         unk_token="<unk>")
    a, b = _load(tmp_path, [{"prompt": "hello world", "completion": "world"},
                            {"prompt": "hello", "completion": "world </s>"}], llama_like)
    assert a.prompt_ids == (1, 3, 4) and a.completion_ids == (4, 2)
    assert b.prompt_ids == (1, 3) and b.completion_ids == (4, 2)


def test_trailing_assistant_turn_is_the_reference_completion(tmp_path, tok):
    chat = CHAT + [{"role": "assistant", "content": "\\boxed{4}"}]
    (e,) = _load(tmp_path, [{"messages": chat}], tok)
    assert list(e.prompt_ids) == _apply(tok, CHAT)
    assert list(e.completion_ids) == tok("\\boxed{4}", add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id]
    with pytest.raises(DataError, match=r"d\.jsonl:1: both `completion` and a trailing assistant"):
        _load(tmp_path, [{"messages": chat, "completion": "4"}], tok)


def test_teacher_messages_go_through_the_teachers_tokenizer_and_template(tmp_path, tok):
    teacher = smoke.chat_tokenizer()
    teacher.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    privileged = [{"role": "user", "content": "Hint: 4. What is 2 + 2?"}]
    (e,) = _load(tmp_path, [{"messages": CHAT, "teacher_messages": privileged}], tok,
                 teacher_tokenizer=teacher)
    assert list(e.teacher_prompt_ids) == _apply(teacher, privileged)
    assert tok.decode(list(e.teacher_prompt_ids)) == "[Hint: 4. What is 2 + 2?]"
    assert list(e.prompt_ids) == _apply(tok, CHAT)
    (same,) = _load(tmp_path, [{"messages": CHAT, "teacher_messages": privileged}], tok)
    assert list(same.teacher_prompt_ids) == _apply(tok, privileged)  # default: the student's


def test_gzipped_jsonl_reads_like_jsonl(tmp_path, tok):
    recs = [{"messages": CHAT, "answer": "4"}, {"prompt_ids": [5, 6, 7]}]
    plain = load_examples(write_records(tmp_path / "a.jsonl", recs), tokenizer=tok,
                          max_prompt_len=256)
    gz = load_examples(write_records(tmp_path / "a.jsonl.gz", recs, gz=True), tokenizer=tok,
                       max_prompt_len=256)
    assert plain == gz and [e.line for e in gz] == [1, 2]
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz: cannot be read as gzipped"):
        load_examples(str(tmp_path / "bad.jsonl.gz"), max_prompt_len=8)


@pytest.mark.parametrize("record,match", [
    ({"prompt_ids": [3, True, 4]}, r"prompt_ids must be a list of non-negative ints"),
    ({"prompt_ids": [3], "completion_ids": [False]}, r"completion_ids must be a list"),
    ({"prompt_ids": [3], "teacher_prompt_ids": [1.5]}, r"teacher_prompt_ids must be a list"),
    ({"prompt_ids": [3], "aux_teacher_prompts_ids": [[3], [True]]},
     r"aux_teacher_prompts_ids\[1\] must be a list of non-negative ints"),
    ({"prompt_ids": [3], "aux_teacher_prompts_ids": []},
     r"aux_teacher_prompts_ids must be a non-empty"),
    ({"prompt_ids": [3], "aux_teacher_prompts_ids": [[3], []]},
     r"the aux_teacher_prompts_ids\[1\] is empty"),
    ({"prompt_ids": [3], "aux_teacher_prompts_ids": [[3] * 9]},
     r"the aux_teacher_prompts_ids\[0\] has 9 tokens"),
    ({"prompt_ids": [3], "bad_teacher_prompt_ids": [3, 200]},
     r"bad_teacher_prompt_ids has token id 200 >= vocab_size 128"),
    ({"prompt_ids": [3], "bad_teacher_prompt_ids": []}, r"the bad_teacher_prompt_ids is empty"),
    ({"messages": []}, r"messages must be a non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, r"messages\[0\] must be \{'role'"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, r"messages holds only an assistant turn"),
    ({"prompt_ids": [3], "teacher_messages": CHAT + [{"role": "assistant", "content": "4"}]},
     r"teacher_messages ends with an assistant turn"),
    ({"prompt": "x" * 9}, r"the prompt has 9 tokens, more than data\.max_prompt_len=8"),
    ({"prompt": 5}, r"prompt must be a string, got int"),
], ids=lambda x: None)
def test_bad_records_name_the_line_and_field(tmp_path, tok, record, match):
    with pytest.raises(DataError, match=r"d\.jsonl:2: " + match):
        _load(tmp_path, [{"prompt_ids": [3]}, record], tok, max_prompt_len=8, vocab_size=128)


def test_text_without_a_tokenizer_and_a_tokenizer_without_template(tmp_path):
    with pytest.raises(DataError, match=r"d\.jsonl:1: messages is text but no tokenizer was given"):
        _load(tmp_path, [{"messages": CHAT}], None)
    bare = smoke.chat_tokenizer()
    bare.chat_template = None
    with pytest.raises(DataError, match=r"d\.jsonl:1: the tokenizer .* has no chat template"):
        _load(tmp_path, [{"messages": CHAT}], bare)


def test_template_kwargs_from_json():
    assert template_kwargs('{"enable_thinking": false}') == {"enable_thinking": False}
    assert template_kwargs("") == {} and template_kwargs({"a": 1}) == {"a": 1}
    with pytest.raises(DataError, match="must be a JSON object"):
        template_kwargs("[1]")


def test_eos_ids_come_from_the_generation_config_all_of_them(tmp_path, tok):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"eos_token_id": 9}))
    assert generation_eos_ids(d) == (9,)  # no generation config: config.json's
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643, 151645]}))
    assert generation_eos_ids(d) == (151645, 151643)  # every id, in order, once
    assert default_eos_ids(str(d), tok) == (151645, 151643)
    assert default_eos_ids(str(d), tok, configured=(7,)) == (7,)  # the config wins
    assert default_eos_ids("", tok) == (tok.eos_token_id,)  # no checkpoint: the tokenizer's
    assert default_eos_ids("", None) == ()
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, True]}))
    with pytest.raises(ValueError, match=r"generation_config\.json: eos_token_id must be"):
        generation_eos_ids(d)


def test_a_different_tokenizer_is_refused_naming_the_first_differing_token(tok):
    assert first_difference(tok, smoke.chat_tokenizer()) is None
    check_same_tokenizer(tok, smoke.chat_tokenizer())
    words = ["<unk>", "a", "b", "c"]
    def word_tok(ws):
        t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(ws)}, unk_token="<unk>"))
        return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>")
    other = word_tok(["<unk>", "a", "x", "c", "d"])
    assert first_difference(word_tok(words), other) == (2, "b", "x")
    with pytest.raises(TokenizerMismatch, match=r"id 2 is 'b' for the student \(s\) but 'x' for "
                                                r"the teacher \(t\)"):
        check_same_tokenizer(word_tok(words), other, student_name="student (s)",
                             teacher_name="teacher (t)")
    with pytest.raises(TokenizerMismatch, match=r"id 4 is no token for the student"):
        check_same_tokenizer(word_tok(words), word_tok(words + ["d"]))


def test_env_turns_render_as_the_chat_template_continues_a_conversation(tmp_path, tok):
    """prompt + an assistant turn (its tokens and the end-of-turn token) + env_turns[j] is what the
    template renders for the conversation with that assistant turn and the next message."""
    user = [{"role": "user", "content": "What is 2 + 2?"}]
    turns = ["Are you sure?", {"role": "tool", "content": "4"}]
    (e,) = _load(tmp_path, [{"messages": user, "env_turns": turns}], tok)
    (same,) = _load(tmp_path, [{"prompt": user[0]["content"], "env_turns": turns}], tok,
                    chat_template=True)
    assert same.env_turns_ids == e.env_turns_ids and len(e.env_turns_ids) == 2
    answer = tok("4", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    for j, turn in enumerate(turns):
        msg = {"role": "user", "content": turn} if isinstance(turn, str) else turn
        whole = _apply(tok, user + [{"role": "assistant", "content": "4"}, msg])
        assert list(e.prompt_ids) + answer + list(e.env_turns_ids[j]) == whole


@pytest.mark.parametrize("record, match", [
    ({"prompt": "hi", "env_turns": ["more"]}, r"environment turns in text are rendered by the chat template"),
    ({"messages": [{"role": "user", "content": "hi"}], "env_turns": ["a"], "env_turns_ids": [[3]]},
     r"both env_turns and env_turns_ids"),
    ({"messages": [{"role": "user", "content": "hi"}], "env_turns": [{"role": "robot", "content": "a"}]},
     r"env_turns\[0\]\[0\] must be"),
])
def test_bad_env_turns_name_the_line(tmp_path, tok, record, match):
    with pytest.raises(DataError, match=r"d\.jsonl:1: " + match):
        _load(tmp_path, [record], tok)


def test_the_calculator_answers_a_tool_call_as_the_chat_template_writes_a_tool_turn(tmp_path, tok):
    """A turn with a tool call gets the expression's value back as a "tool" turn: the episode's
    tokens (prompt, the student's turn with its end-of-turn token, the reply) are what the chat
    template writes for the whole conversation; a turn without a call ends the episode."""
    import functools

    from opd_jax import environments as EN
    from opd_jax.data import TextOptions, render_turn
    user = [{"role": "user", "content": "What is 12 * (3 + 4)?"}]
    (e,) = _load(tmp_path, [{"messages": user}], tok)
    env = EN.get("calculator", tokenizer=tok, eos_ids=[tok.eos_token_id])
    respond = EN.responder(env, [e], functools.partial(render_turn, opts=TextOptions(tok)), len(tok))
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "12 * (3 + 4)"}}</tool_call>'
    turn = tok(call, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    (reply,) = respond([0], [[turn]])
    whole = _apply(tok, user + [{"role": "assistant", "content": call}, {"role": "tool", "content": "84"}])
    assert list(e.prompt_ids) + turn + list(reply) == whole
    assert respond([0], [[turn, tok("84", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]]) == [None]


@pytest.mark.parametrize("expression", ["1+2*3", "-(4-10)/4", "7//2 + 7%3", "2**10 - 3**-1", "((1.5))*+2"])
def test_the_calculator_computes_what_python_does(expression):
    from opd_jax.environments import arithmetic
    assert arithmetic(expression) == eval(expression)  # the oracle: Python's own arithmetic


@pytest.mark.parametrize("payload, answer", [
    ('{"name": "calculator", "arguments": {"expression": "1/0"}}', "error: division by zero"),
    ('{"name": "calculator", "arguments": {"expression": "__import__(1)"}}', "error: not arithmetic: Call"),
    ('{"name": "calculator", "arguments": {"expression": "2**1000"}}', "error: power too large"),
    ('{"name": "calculator", "arguments": {"expression": "True + 1"}}', "error: not arithmetic: Constant"),
    ('{"name": "search", "arguments": {"query": "x"}}', "error: not a calculator call"),
    ("not json", "error: not a calculator call"),
])
def test_the_calculator_answers_a_bad_call_with_an_error(payload, answer):
    from opd_jax.environments import Calculator
    assert Calculator.call(payload).startswith(answer)


SYSTEM = "You can call a calculator."


def test_a_system_prompt_goes_first_in_every_chat_without_one(tmp_path, tok):
    """data.system_prompt: prompts (messages, or text through the chat template), teacher contexts
    and environment turns are rendered as the chat template renders the conversation with the
    system message first; a chat that has its own system message keeps it."""
    user = [{"role": "user", "content": "What is 2 + 2?"}]
    own = [{"role": "system", "content": "Be brief."}] + user
    sys = [{"role": "system", "content": SYSTEM}]
    records = [{"messages": user, "teacher_messages": [{"role": "user", "content": "hint: 4"}],
                "env_turns": ["Are you sure?"]},
               {"prompt": user[0]["content"]}, {"messages": own}]
    a, b, c = _load(tmp_path, records, tok, chat_template=True, system_prompt=SYSTEM)
    assert list(a.prompt_ids) == _apply(tok, sys + user) == list(b.prompt_ids)
    assert list(a.teacher_prompt_ids) == _apply(tok, sys + [{"role": "user", "content": "hint: 4"}])
    assert list(c.prompt_ids) == _apply(tok, own)
    answer = tok("4", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    whole = _apply(tok, sys + user + [{"role": "assistant", "content": "4"},
                                      {"role": "user", "content": "Are you sure?"}])
    assert list(a.prompt_ids) + answer + list(a.env_turns_ids[0]) == whole


@pytest.mark.parametrize("record, what", [({"prompt_ids": [5, 6]}, "token ids"), ({"prompt": "hi"}, "plain text")])
def test_a_system_prompt_refuses_prompts_that_are_not_chats(tmp_path, tok, record, what):
    with pytest.raises(DataError, match=rf"d\.jsonl:1: a system prompt \(data.system_prompt\) goes into chats, "
                                        rf"but this record's prompt is {what}"):
        _load(tmp_path, [record], tok, system_prompt=SYSTEM)


def test_the_runs_system_prompt_reaches_the_records_and_the_environments_turns(tmp_path, tok):
    """data.system_prompt as the trainer reads the records (training.text.read) and renders an
    environment's text replies (training.text.responder)."""
    import types

    from opd_jax import environments as EN
    from opd_jax.models import tiny_config
    from opd_jax.training import text as T
    from opd_jax.training.config import DataConfig, ModelSpec
    user = [{"role": "user", "content": "What is 2 + 2?"}]
    path = write_records(tmp_path / "d.jsonl", [{"messages": user}])
    exp = types.SimpleNamespace(data=DataConfig(path=path, system_prompt=SYSTEM, max_prompt_len=256),
                                student=ModelSpec(config=tiny_config(vocab_size=len(tok))))
    (e,) = T.read(exp, path, tok)
    sys = [{"role": "system", "content": SYSTEM}]
    assert list(e.prompt_ids) == _apply(tok, sys + user)

    class Ask(EN.Environment):
        max_reply_tokens = 200

        def reply(self, example, turns):
            return "Are you sure?"
    text = types.SimpleNamespace(tokenizer=tok, environment=Ask())
    (reply,) = T.responder(exp, text)([e])([0], [[[tok.eos_token_id]]])
    whole = _apply(tok, sys + user + [{"role": "assistant", "content": ""},
                                      {"role": "user", "content": "Are you sure?"}])
    assert list(e.prompt_ids) + [tok.eos_token_id] + list(reply) == whole
