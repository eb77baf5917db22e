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
- ``"package.module:factory"``: ``factory(tokenizer=..., eos_ids=..., reward_fn=...)`` returns an
  :class:`Environment` (a tool executor, a grader, a simulated user, ...).

The replies are computed on the host, row by row, between the sampler's calls; an environment
should be a pure function of its arguments (every process asks it about its own rows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

Tokens = Sequence[int]
RETRY_MESSAGE = "That is not correct. Try again."


class Environment:
    """Base class: override :meth:`reply`; set ``max_reply_tokens`` or override
    :meth:`reply_bound`."""

    max_reply_tokens: int = 0

    def reply(self, example, turns: list[Tokens]):
        raise NotImplementedError

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


def retry(tokenizer=None, eos_ids=(), reward_fn=None) -> Retry:
    """The built-in ``"retry"`` environment: :class:`Retry` with its default message."""
    return Retry(reward_fn)


ENVIRONMENTS: dict[str, Callable[..., Environment]] = {"retry": retry}


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
              vocab_size: int | None = None) -> Callable[[int, list[Tokens]], tuple[int, ...] | None]:
    """``f(row, turns)``: the environment's reply to row ``row`` (whose record is
    ``examples[row]``) as token ids, checked; ``render(record, message, where=...)`` renders a
    text or dict reply (:func:`opd_jax.data.render_turn` with the run's chat template options)."""
    name = type(env).__name__

    def respond(row: int, turns: list[Tokens]):
        ex = examples[row]
        out = env.reply(ex, turns)
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
    return respond
