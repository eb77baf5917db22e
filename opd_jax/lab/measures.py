"""Measures of a student at an evaluation beyond the lab's standard ones, for the papers' claims.

Each is named by a spec ``"name:argument"`` in ``runner.Schedule.measures`` and reported under
``"name/..."`` keys next to the evaluation's own metrics. The token measures are taken on the
same ``k`` samples per held-out problem as the evaluation's pass@k (the same sampler settings,
key and row streams), scored by the student and by a teacher reading the same prompt:

- ``high_entropy:TAU`` (EOPD, arXiv 2603.07079): at positions where the teacher's entropy
  exceeds ``TAU`` nats, the student's and the teacher's mean entropy (``high_entropy/student``,
  ``/teacher``); the share of positions above ``TAU`` by the teacher's and by the student's
  entropy (``/share_teacher``, ``/share_student``; the paper: 18.5% vs 6.8% after OPD).
- ``tail_mass:K`` (Many Faces, arXiv 2605.11182): the student's probability outside its own
  top-``K`` (``tail_mass/student_topk``: where a biased top-k gradient pushes mass) and outside
  the teacher's top-``K`` (``tail_mass/teacher_topk``), token means.
- ``overlap:K`` (Rethinking OPD, arXiv 2604.13016): top-``K`` overlap ratio, overlap mass of
  each model, overlap-token advantage (the objectives package's diagnostic functions, with the
  thunlp code's definitions) and the entropy gap, teacher minus student (signed and absolute).
- ``rule:NAME`` (OPSD / Many Faces): of the samples' correct answers, the share that follow
  ``data.RULES[NAME]`` (``rule/adherence``); of the parsable ones (``rule/adherence_all``); and
  the share of samples correct *and* following it (``rule/correct_following``).
- ``grad_variance:S`` (vOPD, arXiv 2605.07865): see :mod:`opd_jax.lab.gradvar`.
- ``acceptance:G`` (Draft-OPD, arXiv 2605.29343): the student as a speculative-decoding drafter
  of ``G`` tokens per forward of the teacher, sampling ``ACCEPTANCE_SAMPLES`` answers per problem
  (the evaluation's other sampler settings, key and row streams; the answers follow the teacher's
  distribution): completion tokens per teacher forward (``acceptance/length``, at most ``G + 1``)
  and the share of drafts the teacher accepted (``acceptance/rate``).

A quantity with nothing to average over (no correct answer, no high-entropy position) is NaN.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from opd_jax.data import left_pad
from opd_jax.lab import data as L
from opd_jax.lab.tokenizer import EOS_ID, PAD_ID
from opd_jax.objectives import diagnostics as OD
from opd_jax.objectives import divergences as D
from opd_jax.sampling import SamplerConfig, sample
from opd_jax.sampling.speculative import speculative_sample
from opd_jax.training.batch import Sequences, completion_hidden

# measure name -> the type of its argument
SPECS = {"high_entropy": float, "tail_mass": int, "overlap": int, "rule": str, "grad_variance": int,
         "acceptance": int}
TOKEN_MEASURES = ("high_entropy", "tail_mass", "overlap")
EVAL_SEED = 0  # the lab evaluation's sampling key (opd_jax.lab.evaluate's default seed)
# acceptance:G's answers per problem: 2 x 256 problems x ~10 blocks is a tight mean (speculative
# sampling of the evaluation's own 8 would take ~15 s of each lab evaluation's time on 2 cores)
ACCEPTANCE_SAMPLES = 2


@dataclasses.dataclass(frozen=True)
class Context:
    """What a measure may read: the student and a teacher (``(graphdef, params)``; the teacher
    None when the arm has none to compare with), the held-out examples and the evaluation's
    ``k``; for the gradient measures also the run's seed, its training examples and its batch
    shape (``prompts`` x ``samples``)."""
    student: Any
    teacher: Any
    examples: Sequence
    tokenizer: Any
    k: int
    mesh: Any = None
    seed: int = 0
    train_examples: Sequence | None = None
    prompts: int = 16
    samples: int = 4
    max_new_tokens: int = 32


def parse(spec: str) -> tuple[str, Any]:
    """``"name:argument"`` -> ``(name, argument)`` (the argument converted to its type)."""
    name, _, arg = spec.partition(":")
    if name not in SPECS or not arg:
        raise ValueError(f"unknown measure {spec!r}: write name:argument with a name of {sorted(SPECS)} "
                         "(e.g. 'tail_mass:4', 'high_entropy:0.8', 'rule:no_subtraction')")
    try:
        value = SPECS[name](arg)
    except ValueError as e:
        raise ValueError(f"measure {spec!r}: {arg!r} is not a {SPECS[name].__name__}") from e
    if name == "rule" and value not in L.RULES:
        raise ValueError(f"measure {spec!r}: unknown rule; known: {sorted(L.RULES)}")
    if name in ("tail_mass", "overlap", "grad_variance", "acceptance") \
            and value < (2 if name == "grad_variance" else 1):
        raise ValueError(f"measure {spec!r}: the argument must be >= {2 if name == 'grad_variance' else 1}")
    return name, value


def check(specs) -> None:
    """Refuse a malformed list of measures (see :func:`parse`), each name at most once."""
    if not isinstance(specs, tuple) or not all(isinstance(s, str) for s in specs):
        raise ValueError(f"measures must be a tuple of 'name:argument' strings, got {specs!r}")
    names = [parse(s)[0] for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"each measure may appear once, got {list(specs)}")


def _eval_inputs(ctx: Context):
    """The evaluation's sampler settings and its left-padded prompts, mask and row ids."""
    width = max(len(e.prompt_ids) for e in ctx.examples)
    cfg = SamplerConfig(max_new_tokens=ctx.max_new_tokens, eos_ids=(EOS_ID,), pad_id=PAD_ID,
                        temperature=1.0, prompt_buckets=(width,),
                        new_token_buckets=(ctx.max_new_tokens,), num_samples=ctx.k)
    prompts, mask = left_pad([e.prompt_ids for e in ctx.examples], width, PAD_ID)
    return cfg, prompts, mask, np.arange(len(ctx.examples), dtype=np.int32)


def draws(ctx: Context):
    """The evaluation's ``k`` samples per example (its sampler settings, key and row streams)."""
    cfg, prompts, mask, rows = _eval_inputs(ctx)
    with jax.set_mesh(ctx.mesh) if ctx.mesh is not None else contextlib.nullcontext():
        roll = sample(*ctx.student, prompts, mask, jax.random.key(EVAL_SEED), cfg=cfg, row_ids=rows)
    return jax.device_get((roll.tokens, roll.mask, roll.completion_mask, roll.prompt_len))


def acceptance(ctx: Context, gamma: int) -> dict[str, float]:
    """``acceptance:G``: the student drafting ``G`` tokens per forward of the teacher."""
    if ctx.teacher is None:
        raise ValueError(f"measure acceptance:{gamma} has the student draft for a teacher; the arm has "
                         "none (set Schedule.reference)")
    cfg, prompts, mask, rows = _eval_inputs(ctx)
    cfg = cfg.replace(num_samples=min(ctx.k, ACCEPTANCE_SAMPLES))
    with jax.set_mesh(ctx.mesh) if ctx.mesh is not None else contextlib.nullcontext():
        _, stats = speculative_sample(ctx.student, ctx.teacher, prompts, mask, jax.random.key(EVAL_SEED),
                                      cfg=cfg, draft_tokens=gamma, row_ids=rows)
    return {"acceptance/length": stats.acceptance_length(), "acceptance/rate": stats.acceptance_rate()}


@functools.partial(jax.jit, static_argnames=("s_graph", "t_graph", "n", "ks"))
def token_features(s_graph, s_params, t_graph, t_params, tokens, mask, *, n: int,
                   ks: tuple[int, ...]) -> dict[str, jax.Array]:
    """Per completion token (``[R, n]``, the last ``n`` columns of ``tokens``): both entropies
    and, for each ``k`` of ``ks``, the tail masses and the overlap quantities at ``k``."""
    seq = Sequences.from_left_padded(tokens, mask)
    models = nnx.merge(s_graph, s_params), nnx.merge(t_graph, t_params)
    zs, zt = (m.logits(completion_hidden(m, seq, n)).astype(jnp.float32) for m in models)
    lp = jax.nn.log_softmax(zs, axis=-1)
    out = {"student_entropy": D.token_entropy(zs), "teacher_entropy": D.token_entropy(zt)}
    for k in ks:
        top_p = jax.lax.top_k(lp, k)[0]
        t_ids = jax.lax.top_k(zt, k)[1]
        out[f"tail_student@{k}"] = 1.0 - jnp.sum(jnp.exp(top_p), -1)
        out[f"tail_teacher@{k}"] = 1.0 - jnp.sum(jnp.exp(jnp.take_along_axis(lp, t_ids, -1)), -1)
        out[f"overlap_count@{k}"] = OD.overlap_count(zs, zt, k=k)
        out[f"overlap_mass_student@{k}"] = OD.overlap_mass_student(zs, zt, k=k)
        out[f"overlap_mass_teacher@{k}"] = OD.overlap_mass_teacher(zs, zt, k=k)
        out[f"overlap_adv_sum@{k}"] = OD.overlap_advantage_sum(zs, zt, k=k)
    return out


def _mean(x, where) -> float:
    n = float(np.sum(where))
    return float(np.sum(np.where(where, x, 0.0)) / n) if n else float("nan")


def summarize(feats: dict[str, np.ndarray], mask: np.ndarray, specs: Sequence[str]) -> dict[str, float]:
    """The token measures of ``specs`` from :func:`token_features`' arrays and the completion mask."""
    m = np.asarray(mask, bool)
    f = {name: np.asarray(v, np.float64) for name, v in feats.items()}
    hs, ht = f["student_entropy"], f["teacher_entropy"]
    out = {}
    for name, arg in map(parse, specs):
        if name == "high_entropy":
            hi = m & (ht > arg)
            out.update({"high_entropy/student": _mean(hs, hi), "high_entropy/teacher": _mean(ht, hi),
                        "high_entropy/share_teacher": _mean(hi, m),
                        "high_entropy/share_student": _mean(hs > arg, m)})
        elif name == "tail_mass":
            out.update({"tail_mass/student_topk": _mean(f[f"tail_student@{arg}"], m),
                        "tail_mass/teacher_topk": _mean(f[f"tail_teacher@{arg}"], m)})
        elif name == "overlap":
            count = f[f"overlap_count@{arg}"]
            some = m & (count > 0)
            n_count = float(np.sum(np.where(m, count, 0.0)))
            out.update({"overlap/ratio": _mean(count / arg, m),
                        "overlap/mass_student": _mean(f[f"overlap_mass_student@{arg}"], some),
                        "overlap/mass_teacher": _mean(f[f"overlap_mass_teacher@{arg}"], some),
                        "overlap/advantage": (float(np.sum(np.where(m, f[f"overlap_adv_sum@{arg}"], 0.0)))
                                              / n_count if n_count else float("nan")),
                        "overlap/entropy_gap": _mean(ht - hs, m),
                        "overlap/entropy_gap_abs": _mean(np.abs(ht - hs), m)})
    return out


def rule_adherence(texts: Sequence[str], answers: Sequence, rule: str) -> dict[str, float]:
    """``rule:NAME``'s values over answer ``texts``, each with its record's ``answer``."""
    correct = following = correct_following = parsable = 0
    for text, answer in zip(texts, answers):
        problem, fmt = L.answer_problem(answer)
        steps = L.parse_answer(text, fmt)
        if steps is None:
            continue
        parsable += 1
        ok, follows = L.verify_answer(problem, text, fmt), L.follows_rule(steps, rule)
        following += follows
        correct += ok
        correct_following += ok and follows
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return {"rule/adherence": ratio(correct_following, correct),
            "rule/adherence_all": ratio(following, parsable),
            "rule/correct_following": ratio(correct_following, len(texts))}


def evaluate(specs: Sequence[str], ctx: Context) -> dict[str, float]:
    """Every measure of ``specs`` for the student of ``ctx``."""
    check(tuple(specs))
    parsed = [parse(s) for s in specs]
    out: dict[str, float] = {}
    token = [s for s, (name, _) in zip(specs, parsed) if name in TOKEN_MEASURES]
    rules = [arg for name, arg in parsed if name == "rule"]
    if token or rules:
        tokens, mask, cmask, p = draws(ctx)
        if token:
            if ctx.teacher is None:
                raise ValueError(f"measures {token} compare the student with a teacher; the arm has "
                                 "none to compare with (set Schedule.reference)")
            ks = tuple(sorted({arg for name, arg in parsed if name in ("tail_mass", "overlap")}))
            n = tokens.shape[1] - p
            with jax.set_mesh(ctx.mesh) if ctx.mesh is not None else contextlib.nullcontext():
                feats = jax.device_get(token_features(ctx.student[0], ctx.student[1], ctx.teacher[0],
                                                      ctx.teacher[1], tokens, mask, n=n, ks=ks))
            out.update(summarize(feats, cmask[:, p:], token))
        for rule in rules:
            texts = [L.completion_text(ctx.tokenizer, t[m]) for t, m in zip(tokens[:, p:], cmask[:, p:])]
            answers = [ctx.examples[r // ctx.k].answer for r in range(len(texts))]
            out.update(rule_adherence(texts, answers, rule))
    for name, arg in parsed:
        if name == "acceptance":
            out.update(acceptance(ctx, arg))
        if name == "grad_variance":
            from opd_jax.lab import gradvar
            out.update(gradvar.measure(ctx, arg))
    return out
