"""Environments of multi-turn episodes: what follows each of the student's turns.

An episode (``loop.turns``, ``eval.turns``) is the prompt, the student's turn, the environment's
reply, the student's next turn, and so on. After each student turn that ends with an EOS token,
the run asks the environment for its reply::

    env.reply(example, turns) -> token ids | text | a {"role", "content"} turn | None

``example`` is the record's :class:`opd_jax.data.Example` (``example.record`` the raw record,
``example.answer`` its reference answer), ``turns`` the student's turns so far (token-id lists, each
ending with its EOS token). A text reply is a user message, a dict any role's turn (``"tool"`` for
a tool's output); both are rendered by the chat template as the conversation goes on after the
student's end-of-turn token (:func:`opd_jax.data.render_turn`). ``None`` ends the episode.

``env.reply_bound(example, turn)`` bounds the length in tokens of the reply after student turn
``turn`` (from 1); the run checks the longest possible episode against the models' positions and
the sampler's buckets before anything is compiled, and a reply longer than its bound stops the
run with an error naming it. The base class's bound is ``max_reply_tokens``.

Built in (``environment=`` in the experiment, ``--environment`` in ``opd_jax.evaluate``):

- ``""`` (default): :class:`RecordTurns`, each record's own ``env_turns`` / ``env_turns_ids``, in order;
- ``"retry"``: :class:`Retry`, "try again" after a wrong answer (the run's reward function reads the
  student's last turn), until it is right;
- ``"calculator"``: :class:`Calculator`, a tool: a turn that calls it (``<tool_call>{"name":
  "calculator", "arguments": {"expression": "..."}}</tool_call>``, Qwen3's and Hermes' format) gets
  the expression's value back as a ``"tool"`` turn; a turn without a call is the final answer;
- ``"package.module:factory"``: ``factory(tokenizer=..., eos_ids=..., reward_fn=...)`` returns an
  :class:`Environment` (a tool executor, a grader, a simulated user, ...).

The replies are computed on the host between the sampler's calls, all the rows of a turn at
once through ``env.replies(examples, turns)``: by default :meth:`Environment.reply` row by row,
``concurrency`` of them at a time in threads (tools that wait on a subprocess, a sandbox or a
server); an environment that can batch overrides ``replies``. An environment should be a pure
function of its arguments (every process asks it about its own rows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

Tokens = Sequence[int]
RETRY_MESSAGE = "That is not correct. Try again."


class Environment:
    """Base class: override :meth:`reply` (or :meth:`replies`); set ``max_reply_tokens`` or
    override :meth:`reply_bound`; ``concurrency``: the replies :meth:`replies` computes at once."""

    max_reply_tokens: int = 0
    concurrency: int = 1

    def reply(self, example, turns: list[Tokens]):
        raise NotImplementedError

    def replies(self, examples: Sequence, turns: Sequence[list[Tokens]]) -> list:
        """The replies to several rows (``examples[i]`` after its student turns ``turns[i]``):
        :meth:`reply` for each, up to ``concurrency`` at a time in threads."""
        if self.concurrency <= 1 or len(examples) <= 1:
            return [self.reply(e, t) for e, t in zip(examples, turns)]
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(min(self.concurrency, len(examples))) as pool:
            return list(pool.map(self.reply, examples, turns))

    def reply_bound(self, example, turn: int) -> int:
        """The most tokens the reply after student turn ``turn`` (from 1) can hold (0: none)."""
        return self.max_reply_tokens


class RecordTurns(Environment):
    """The record's own environment turns (``env_turns_ids``, or ``env_turns`` rendered when the
    records were read), one after each student turn, whatever the student wrote."""

    def reply(self, example, turns):
        t = len(turns)
        return example.env_turns_ids[t - 1] if t <= len(example.env_turns_ids) else None

    def reply_bound(self, example, turn):
        return len(example.env_turns_ids[turn - 1]) if turn <= len(example.env_turns_ids) else 0


class Retry(Environment):
    """Self-correction episodes: after a student turn whose answer ``reward_fn(example, turn ids)``
    scores below ``threshold``, the user says ``message`` (text, a role/content turn, or token
    ids); a right answer ends the episode. ``max_reply_tokens``: the rendered message's bound
    (default: its length for token ids, 64 for text)."""

    def __init__(self, reward_fn, message: str | Mapping | Sequence[int] = RETRY_MESSAGE,
                 threshold: float = 1.0, max_reply_tokens: int | None = None):
        if reward_fn is None:
            raise ValueError("environment 'retry' checks each answer with the run's reward function: "
                             "set reward (e.g. --set reward=math) or give reward_fn")
        text = isinstance(message, (str, Mapping))
        self.reward_fn, self.threshold = reward_fn, threshold
        self.message = message if text else tuple(int(t) for t in message)
        self.max_reply_tokens = max_reply_tokens or (64 if text else len(self.message))

    def reply(self, example, turns):
        return None if self.reward_fn(example, list(turns[-1])) >= self.threshold else self.message


class Calculator(Environment):
    """A calculator tool (see the module docstring). The student's turn is decoded (up to its EOS
    token); its last ``<tool_call>...</tool_call>`` is read as JSON ``{"name": "calculator",
    "arguments": {"expression": text}}`` and the reply is the value of the expression (numbers,
    ``+ - * / // % **`` and parentheses; at most ``max_chars`` characters of text) or ``"error:
    ..."`` for a call it cannot carry out, as a ``"tool"`` turn. ``max_reply_tokens``: the rendered
    turn's bound (the chat template's wrapping included)."""

    OPEN, CLOSE = "<tool_call>", "</tool_call>"

    def __init__(self, tokenizer, eos_ids=(), max_chars: int = 32, max_reply_tokens: int = 96):
        if tokenizer is None:
            raise ValueError("environment 'calculator' reads the student's text: it needs a tokenizer")
        self.tokenizer, self.eos_ids = tokenizer, tuple(int(i) for i in eos_ids)
        self.max_chars, self.max_reply_tokens = max_chars, max_reply_tokens

    def reply(self, example, turns):
        from opd_jax.rewards import completion_text
        text, _ = completion_text(self.tokenizer, turns[-1], self.eos_ids)
        start = text.rfind(self.OPEN)
        end = text.find(self.CLOSE, start)
        if start < 0 or end < 0:
            return None  # no (complete) tool call: the final answer
        return {"role": "tool", "content": self.call(text[start + len(self.OPEN):end])[:self.max_chars]}

    @staticmethod
    def call(payload: str) -> str:
        """The tool's answer to one call's JSON text."""
        import json
        try:
            call = json.loads(payload)
            expression = call["arguments"]["expression"]
            if call.get("name") != "calculator" or not isinstance(expression, str):
                raise KeyError
        except (ValueError, KeyError, TypeError):
            return "error: not a calculator call"
        try:
            value = arithmetic(expression)
        except (ValueError, ZeroDivisionError, OverflowError, SyntaxError) as e:
            return f"error: {e}"
        return str(value) if isinstance(value, int) else f"{value:.10g}"


def arithmetic(expression: str) -> int | float:
    """The value of an arithmetic expression (numbers, ``+ - * / // % **``, unary signs and
    parentheses), computed without ``eval``; ValueError for anything else, or for a power whose
    result would be huge."""
    import ast
    import operator
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            x = value(node.operand)
            return x if isinstance(node.op, ast.UAdd) else -x
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            a, b = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and (abs(b) > 64 or abs(a) > 1e6):
                raise ValueError("power too large")
            return ops[type(node.op)](a, b)
        raise ValueError(f"not arithmetic: {type(node).__name__}")
    if len(expression) > 200:
        raise ValueError("expression too long")
    return value(ast.parse(expression, mode="eval").body)


def retry(tokenizer=None, eos_ids=(), reward_fn=None) -> Retry:
    """The built-in ``"retry"`` environment: :class:`Retry` with its default message."""
    return Retry(reward_fn)


def calculator(tokenizer=None, eos_ids=(), reward_fn=None) -> Calculator:
    """The built-in ``"calculator"`` environment: :class:`Calculator` with its defaults."""
    return Calculator(tokenizer, eos_ids)


ENVIRONMENTS: dict[str, Callable[..., Environment]] = {"retry": retry, "calculator": calculator}


def get(name: str, *, tokenizer=None, eos_ids: Sequence[int] = (), reward_fn=None) -> Environment:
    """The environment ``name`` names (see the module docstring)."""
    if not name:
        return RecordTurns()
    from opd_jax.config import named_factory
    factory = named_factory("environment", name, ENVIRONMENTS,
                            "factory(tokenizer=, eos_ids=, reward_fn=) -> Environment; or '' for the "
                            "records' env_turns")
    env = factory(tokenizer=tokenizer, eos_ids=tuple(eos_ids), reward_fn=reward_fn)
    if not isinstance(env, Environment):
        raise ValueError(f"environment {name!r}: the factory returned {type(env).__name__}, not an "
                         "opd_jax.environments.Environment")
    return env


def reply_tokens(env: Environment, example, turns: int) -> int:
    """The most environment tokens an episode of ``turns`` student turns of ``example`` holds."""
    return sum(int(env.reply_bound(example, t)) for t in range(1, turns))


def responder(env: Environment, examples: Sequence, render: Callable[..., Tokens] | None,
              vocab_size: int | None = None) -> Callable[[list[int], list[list[Tokens]]], list]:
    """``f(rows, turns)``: the environment's replies to ``rows`` (row ``r``'s record is
    ``examples[r]``; ``turns``: each one's student turns so far) as token ids or None, checked;
    ``render(record, message, where=...)`` renders a text or dict reply
    (:func:`opd_jax.data.render_turn` with the run's chat template options)."""
    name = type(env).__name__

    def check(row: int, turns: list[Tokens], out):
        ex = examples[row]
        if out is None:
            return None
        where = f"environment {name}, record at line {ex.line}, after student turn {len(turns)}"
        if isinstance(out, (str, Mapping)):
            if render is None:
                raise ValueError(f"{where}: a reply in text, but this run has no tokenizer to render "
                                 "it with; reply with token ids")
            out = render(ex.record, out, where=where)
        ids = tuple(int(t) for t in out)
        if not ids:
            raise ValueError(f"{where}: an empty reply; return None to end the episode")
        if vocab_size is not None and (min(ids) < 0 or max(ids) >= vocab_size):
            raise ValueError(f"{where}: token id {max(ids) if max(ids) >= vocab_size else min(ids)} "
                             f"outside the vocabulary [0, {vocab_size})")
        bound = int(env.reply_bound(ex, len(turns)))
        if len(ids) > bound:
            raise ValueError(f"{where}: a reply of {len(ids)} tokens, more than its bound "
                             f"reply_bound={bound} (max_reply_tokens), which the length checks "
                             "assumed; raise the bound")
        return ids

    def respond(rows: list[int], turns: list[list[Tokens]]) -> list:
        if not rows:
            return []
        out = list(env.replies([examples[r] for r in rows], turns))
        if len(out) != len(rows):
            raise ValueError(f"environment {name}: replies() gave {len(out)} replies to {len(rows)} rows")
        return [check(r, t, x) for r, t, x in zip(rows, turns, out)]
    return respond
