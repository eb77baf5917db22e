"""A teacher context built from the student's other samples of the same prompt (MOPD, peers).

Multi-Rollout On-Policy Distillation (Yu et al., arXiv 2605.12652) conditions the teacher on the
student's *peer* rollouts: the other samples of the row's prompt, split by the verifier into
successes and failures. "Positive peer imitation" shows the teacher successful peers only;
"contrastive" shows successes and failures. With the student as its own teacher (``teacher.kind``
``self``, ``ema`` or ``initial``) this is self-distillation whose privileged context the student
wrote itself, the way SDPO conditions on a successful attempt.

Per on-policy step, on each host: every row's completion is scored by the reward function; a
row's context shows up to ``successes`` successful and ``failures`` failed peers of its group
(never the row itself), taken in group order starting after the row, so that rows of one group
see different peers; the text is ``template`` with ``{prompt}`` (the record's prompt text),
``{successes}`` and ``{failures}`` (the peers' decoded completions joined by ``separator``),
tokenized as the records' ``teacher_prompt`` (``teacher_messages`` for chat records: the last user
turn's text replaced). A row whose context would show no successful peer (``successes > 0``) or
no peer at all (``successes == 0``) is *uninformed*: it keeps its own prompt and contributes no
loss. So is a row whose context exceeds the contexts' width (``max_len``, or by default a bound
on the prompt, the peers and the template's own text: :meth:`PeerSpec.width`). Contexts are
left-padded to that width (one shape: the train step compiles once).

The paper's loss (a generalised JSD(0.5) over top-100 logits) is the objective's choice:
``opsd`` with ``teacher_top_k=100`` is one over the teacher's top 100. Its exact peer counts,
order and prompt wording are not given in its abstract; they are parameters here.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Sequence

import numpy as np

from opd_jax import data as D
from opd_jax.objectives import reads_teacher, recipe_name
from opd_jax.training import batches as B

FIELDS = ("prompt", "successes", "failures")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PeerSpec:
    """``teacher.peers``: the teacher reads its row's peers (off while ``successes`` and
    ``failures`` are both 0). See the module docstring."""
    successes: int = 0  # successful peers shown, at most
    failures: int = 0  # failed peers shown, at most
    template: str = "{successes}\n\n{prompt}"  # the teacher's prompt text
    separator: str = "\n\n"  # between two peers in {successes} / {failures}
    success_reward: float = 1.0  # a peer succeeded when its reward is at least this
    max_len: int = 0  # context tokens at most (0: data.max_prompt_len + the peers' and template's)

    def __post_init__(self):
        for name in ("successes", "failures", "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"teacher.peers.{name} must be an integer >= 0, got {value!r}")
        try:
            named = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        except ValueError as e:
            raise ValueError(f"teacher.peers.template is not a format string ({e}); write "
                             "literal braces as {{ and }}") from e
        unknown = named - set(FIELDS)
        if unknown:
            raise ValueError(f"teacher.peers.template names {sorted(unknown)}; it may use only "
                             f"{{prompt}}, {{successes}} and {{failures}}")
        if self.on:
            needed = ["prompt"] + ["successes"] * (self.successes > 0) + ["failures"] * (self.failures > 0)
            missing = [f for f in needed if f not in named]
            if missing:
                raise ValueError(f"teacher.peers.template must contain {{{'}, {'.join(missing)}}} "
                                 f"(successes={self.successes}, failures={self.failures}); got "
                                 f"{self.template!r}")

    @property
    def on(self) -> bool:
        return self.successes > 0 or self.failures > 0

    def width(self, max_prompt_len: int, max_new_tokens: int, literal_len: int = 0) -> int:
        """The contexts' padded length: ``max_len``, else the record prompt's bound, plus every
        shown peer's completion bound, plus ``literal_len`` (the template's own text, tokenized),
        rounded up to a multiple of 8."""
        peers = self.successes + self.failures
        return self.max_len or -(-(max_prompt_len + peers * max_new_tokens + literal_len) // 8) * 8

    def literal(self) -> str:
        """The template's own text: its fields empty, one separator per shown peer."""
        return self.template.format(prompt="", successes="", failures="") + self.separator * (
            self.successes + self.failures)


def choose(rewards: Sequence[float], group: int, successes: int, failures: int,
           success_reward: float) -> list[tuple[list[int], list[int]]]:
    """Per row, the rows of its successful and of its failed peers (see the module docstring):
    row ``i`` of a group of ``group`` rows looks at ``i + 1, i + 2, ...`` around the group."""
    rewards = np.asarray(rewards, np.float64)
    if len(rewards) % group:
        raise ValueError(f"{len(rewards)} rows do not come in groups of {group}")
    out = []
    for i in range(len(rewards)):
        start = i - i % group
        order = [start + (i - start + j) % group for j in range(1, group)]
        good = [r for r in order if rewards[r] >= success_reward][:successes]
        bad = [r for r in order if rewards[r] < success_reward][:failures]
        out.append((good, bad))
    return out


def render(spec: PeerSpec, prompt: str, good: list[str], bad: list[str]) -> str:
    """The teacher's prompt text for peers whose completions read ``good`` and ``bad``."""
    return spec.template.format(prompt=prompt, successes=spec.separator.join(good),
                                failures=spec.separator.join(bad))


def prompt_text(record: dict, where: str) -> str:
    """The record's prompt as text: ``prompt``, or the last user turn of ``messages``."""
    if isinstance(record.get("prompt"), str):
        return record["prompt"]
    users = [m for m in record.get("messages", ()) if isinstance(m, dict) and m.get("role") == "user"]
    if users and isinstance(users[-1].get("content"), str):
        return users[-1]["content"]
    raise D.DataError(f"{where}: teacher.peers needs the prompt as text (a `prompt` or a `messages` "
                      "field with a user turn); this record has neither")


def teacher_record(record: dict, text: str) -> dict:
    """A record whose teacher context is ``text``: in the chat of ``messages`` (its last user turn
    replaced, a trailing assistant turn dropped) or as ``teacher_prompt``."""
    if "messages" not in record or isinstance(record.get("prompt"), str):
        return {"teacher_prompt": text}
    msgs = [dict(m) for m in record["messages"]]
    if msgs[-1].get("role") == "assistant":
        msgs = msgs[:-1]
    last = max(i for i, m in enumerate(msgs) if m.get("role") == "user")
    msgs[last]["content"] = text
    return {"teacher_messages": msgs}


def contexts(spec: PeerSpec, examples: Sequence[D.Example], completions: Sequence[Sequence[int]],
             rewards: Sequence[float], opts: D.TextOptions, width: int
             ) -> tuple[list[tuple[int, ...] | None], dict[str, float]]:
    """Per row (``len(completions) // len(examples)`` consecutive rows per example), its context's
    token ids, or None for an uninformed row; and the step's statistics."""
    group = len(completions) // len(examples)
    tok = opts.teacher_tokenizer or opts.tokenizer
    if tok is None:
        raise ValueError("teacher.peers renders the peers' text: the run needs a tokenizer")
    texts = [tok.decode(list(c), skip_special_tokens=True) for c in completions]
    out, too_long = [], 0
    for i, (good, bad) in enumerate(choose(rewards, group, spec.successes, spec.failures,
                                           spec.success_reward)):
        if not (good if spec.successes else bad):
            out.append(None)
            continue
        ex = examples[i // group]
        where = f"record at line {ex.line}"
        text = render(spec, prompt_text(ex.record, where), [texts[r] for r in good],
                      [texts[r] for r in bad])
        ids = D.teacher_context_ids(teacher_record(ex.record, text), opts, where)
        if len(ids) > width:
            too_long += 1
            ids = None
        out.append(ids)
    n = max(len(out), 1)
    stats = {"peers/informed": sum(x is not None for x in out) / n, "peers/too_long": too_long / n,
             "peers/success_rate": float(np.mean(np.asarray(rewards) >= spec.success_reward))}
    return out, stats


def teacher_prompts(ids: list[tuple[int, ...] | None], own: np.ndarray, own_mask: np.ndarray,
                    width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-padded ``[R, width]`` teacher prompts (an uninformed row: its own prompt ``own``) and
    whether each row is informed."""
    informed = np.array([x is not None for x in ids], bool)
    own_rows = [tuple(int(t) for t in row[m]) for row, m in zip(own, own_mask)]
    tokens, mask = D.left_pad([x if x is not None else own_rows[i] for i, x in enumerate(ids)],
                              width, pad_id)
    return tokens, mask, informed


class PeerContexts:
    """The loop's use of peers: an on-policy batch's rewards, its rows' contexts, and the
    teacher's sequences built from them (built by :func:`for_run`)."""

    def __init__(self, spec: PeerSpec, opts: D.TextOptions, reward_fn, width: int, pad_id: int):
        self.spec, self.opts, self.reward_fn, self.width, self.pad_id = spec, opts, reward_fn, width, pad_id

    def check_positions(self, limits, max_new_tokens: int) -> None:
        """A context and its completion fit every teacher's positions (``limits``: ``(who,
        positions, reads teacher prompts)`` triples, as for ``checks.check_lengths``)."""
        for who, positions, teacher in limits:
            if teacher and self.width + max_new_tokens > positions:
                raise ValueError(f"teacher.peers contexts of up to {self.width} tokens plus "
                                 f"{max_new_tokens} new tokens exceed the {who}'s {positions} "
                                 "positions; lower teacher.peers.max_len, data.max_prompt_len or "
                                 "sampler.max_new_tokens")

    def __call__(self, rows, batch, prompts):
        """``batch`` (an on-policy batch, ``rows`` its :class:`~opd_jax.training.batches.Rows`)
        with each row's teacher context, its ``reward`` extra and uninformed rows' loss masked
        out; and the statistics of :func:`contexts`."""
        batch = B.with_rewards(rows, batch, prompts, self.reward_fn)
        comp, mask = rows.to_local(batch.targets), rows.to_local(batch.loss_mask)
        rewards = rows.to_local(batch.extras["reward"])[:, 0]
        per = len(comp) // len(prompts.examples)
        ids, stats = contexts(self.spec, prompts.examples, [c[m] for c, m in zip(comp, mask)], rewards,
                              self.opts, self.width)
        tokens, t_mask, informed = teacher_prompts(ids, np.repeat(prompts.tokens, per, axis=0),
                                                   np.repeat(prompts.mask, per, axis=0), self.width,
                                                   self.pad_id)
        g = rows.to_global
        return batch.replace(teacher=B.join(g(tokens), g(t_mask), batch.targets, batch.loss_mask),
                             loss_mask=batch.loss_mask & g(informed[:, None]), teacher_group=1), stats


def for_run(exp, text) -> PeerContexts | None:
    """The run's :class:`PeerContexts` (None while ``teacher.peers`` is off), its set-up and
    every record's prompt text checked before any model is built (``text``: the run's
    :class:`~opd_jax.training.text.Text`)."""
    spec = exp.teacher.peers
    if not spec.on:
        return None
    tokenizer, teacher_tokenizer, reward_fn = text.tokenizer, text.teacher_tokenizer, text.reward_fn
    problems = [] if reads_teacher(exp.objective) else [
        f"an objective that reads a teacher ({recipe_name(exp.objective)!r} does not)"]
    if reward_fn is None:
        problems.append("a reward function to tell successes from failures (set reward=, or pass reward_fn)")
    if exp.sampler.num_samples < 2:
        problems.append(f"peers: sampler.num_samples >= 2 (got {exp.sampler.num_samples})")
    if exp.loop.lmbda < 1 or exp.loop.cold_start_steps:
        problems.append("on-policy steps only: loop.lmbda=1 and loop.cold_start_steps=0")
    if exp.loop.golden_fraction:
        problems.append("the student's own samples as peers: loop.golden_fraction=0")
    if tokenizer is None and teacher_tokenizer is None:
        problems.append("a tokenizer to read the peers' text (a student checkpoint's, or data.tokenizer)")
    if spec.max_len and spec.max_len < exp.data.max_prompt_len:
        problems.append(f"teacher.peers.max_len >= data.max_prompt_len={exp.data.max_prompt_len} "
                        f"(got {spec.max_len}), or 0")
    if problems:
        raise ValueError("teacher.peers is on (successes/failures > 0); it needs " + "; ".join(problems))
    for e in text.examples:
        prompt_text(e.record, f"{exp.data.path}:{e.line}")
    d = exp.data
    opts = D.TextOptions.of(d, tokenizer, teacher_tokenizer)
    literal = len((teacher_tokenizer or tokenizer)(spec.literal(), add_special_tokens=False)["input_ids"])
    width = spec.width(d.max_prompt_len, exp.sampler.max_new_tokens, literal)
    return PeerContexts(spec, opts, reward_fn, width, exp.sampler.pad_id)
