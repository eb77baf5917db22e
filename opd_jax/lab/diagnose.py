"""Diagnostics of the lab: where answers go wrong, whether a teacher is informed in the student's
states, and where the per-token divergence to the teacher sits.

- ``prefix_kind``: the state a partial answer leaves the problem in: ``on_path`` (some solution
  starts with these steps), ``dead_end`` (legal steps that no solution continues), ``invalid``
  (illegal arithmetic or a number that is not available), ``unparsable``, or ``solved``.
- ``continuations``: answers sampled from one model, cut after their first ``depth`` steps; the
  kinds of those prefixes, and how often each continuing model (greedy) finishes the on-path
  ones correctly. A teacher that finishes the student's on-path prefixes as well as its own is
  informed there; the student's off-path prefixes have no correct continuation at all.
- ``token_table``: on the student's own samples, the exact per-token reverse KL to the teacher,
  both entropies, the sampled-token advantage ``log q - log p`` and the teacher's confidence (its
  largest next-token probability: LGR's "supervision fidelity", which that paper finds decays
  along the student's prefixes), averaged by the token's role (operand, operator, result, ...), by
  the state of the answer before the token (on a solution path or not), and by position.

    python -m opd_jax.lab.diagnose --data runs/lab/data --student S_HF --teacher T_HF [--out f.json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from opd_jax.data import left_pad
from opd_jax.lab import countdown as C
from opd_jax.lab import data as L
from opd_jax.lab.tokenizer import EOS_ID, PAD_ID, SPECIALS
from opd_jax.sampling import SamplerConfig, sample

KINDS = ("on_path", "solved", "dead_end", "invalid", "unparsable")
MEASURES = ("reverse_kl", "forward_kl", "teacher_entropy", "student_entropy", "advantage",
            "teacher_confidence")
_WORD = {"forward": re.compile(r"^(\d+)([-+*/])(\d+)(=)(\d+)$"),
         "backward": re.compile(r"^(\d+)(=)(\d+)([-+*/])(\d+)$")}
_ROLES = {"forward": ("operand", "operator", "operand", "equals", "result"),
          "backward": ("result", "equals", "operand", "operator", "operand")}


def _norm(s: C.Step) -> tuple:
    a, b = (max(s.a, s.b), min(s.a, s.b)) if s.op in "+*" else (s.a, s.b)
    return a, s.op, b, s.result


def prefix_kind(problem: C.Problem, words: list[str], fmt: str, solutions=None) -> str:
    """The state after the written steps ``words`` (the first words of an answer in ``fmt``).

    ``forward`` prefixes are the first steps computed; ``backward`` ones the last (the target's
    step first), so they are on a path when some solution ends with them (a whole correct
    backward answer is ``on_path``; ``solved`` is for forward answers). ``solutions``:
    ``countdown.solutions(problem)``, passed to save the search when calling many times."""
    if not words:
        return "on_path"
    steps = C.parse(" ".join(words), fmt)
    if steps is None:
        return "unparsable"
    if fmt == "forward":
        if C.illegal_step(problem, steps) is not None:
            return "invalid"
        if C.check(problem, steps) is None:
            return "solved"
    elif any(C.apply(s.a, s.op, s.b) != s.result for s in steps):
        return "invalid"
    sols = C.solutions(problem) if solutions is None else solutions
    j, mine = len(steps), [_norm(s) for s in steps]
    part = (lambda sol: sol[:j]) if fmt == "forward" else (lambda sol: sol[len(sol) - j:])
    if any(len(sol) >= j and [_norm(s) for s in part(sol)] == mine for sol in sols):
        return "on_path"
    return "dead_end"


def token_roles(text: str, fmt: str) -> list[str]:
    """One role per character of an answer text: ``operand``, ``operator``, ``equals``,
    ``result``, ``separator`` (spaces) or ``other`` (characters of a malformed word)."""
    roles = []
    for i, word in enumerate(text.split(" ")):
        if i:
            roles.append("separator")
        m = _WORD[fmt].match(word)
        if m is None:
            roles.extend(["other"] * len(word))
            continue
        for g, role in enumerate(_ROLES[fmt], start=1):
            roles.extend([role] * (m.end(g) - m.start(g)))
    return roles


def _run(model, prompts, cfg: SamplerConfig, seed: int, mesh):
    width = max(len(p) for p in prompts)
    ids, mask = left_pad([tuple(p) for p in prompts], width, PAD_ID)
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        return sample(*model, ids, mask, jax.random.key(seed), cfg=cfg)


def _texts(tokenizer, roll) -> list[str]:
    P = roll.prompt_len
    toks, mask = np.asarray(roll.tokens)[:, P:], np.asarray(roll.completion_mask)[:, P:]
    return [L.completion_text(tokenizer, t[m]) for t, m in zip(toks, mask)]


def _cfg(max_new_tokens, temperature, n=1):
    return SamplerConfig(max_new_tokens=max_new_tokens, eos_ids=(EOS_ID,), pad_id=PAD_ID,
                         temperature=temperature, num_samples=n)


def continuations(source, continuers: dict, examples, tokenizer, *, depth: int = 1, k: int = 4,
                  seed: int = 0, max_new_tokens: int = 32, mesh=None) -> dict:
    """Answers sampled from ``source`` (``(graphdef, params)``, temperature 1, ``k`` per problem),
    cut after ``depth`` steps: the share of each prefix kind (``ended``: the answer had fewer
    steps), and for every model of ``continuers`` (name -> ``(graphdef, params)``) the share of
    on-path prefixes it finishes correctly, greedily."""
    problems = [L.answer_problem(e.answer) for e in examples]
    sols = [C.solutions(p) for p, _ in problems]
    texts = _texts(tokenizer, _run(source, [e.prompt_ids for e in examples],
                                   _cfg(max_new_tokens, 1.0, k), seed, mesh))
    kinds, starts = {}, []
    for r, text in enumerate(texts):
        i = r // k
        (problem, fmt), words = problems[i], text.split()
        kind = "ended" if len(words) < depth else prefix_kind(problem, words[:depth], fmt, sols[i])
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "on_path":
            starts.append((i, " ".join(words[:depth]) + " "))
    out = {"prefixes": len(texts), "kinds": {x: n / len(texts) for x, n in sorted(kinds.items())},
           "on_path_prefixes": len(starts), "finished_correctly": {}}
    if not starts:
        return out
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [tuple(examples[i].prompt_ids) + tuple(encode(pre)) for i, pre in starts]
    for name, model in continuers.items():
        ends = _texts(tokenizer, _run(model, prompts, _cfg(max_new_tokens, 0.0), seed, mesh))
        ok = [C.verify(problems[i][0], pre + end, problems[i][1]) for (i, pre), end in zip(starts, ends)]
        out["finished_correctly"][name] = float(np.mean(ok))
    return out


_OPERANDS = re.compile(r"^(\d+)([-+*/])(\d+)=")


def written_results(source, writers: dict, examples, tokenizer, *, step: int = 0, k: int = 4,
                    seed: int = 0, mesh=None) -> dict:
    """Does a model compute, or write what it expects? Answers sampled from ``source`` (k per
    problem, temperature 1) are cut after the operands of their step ``step`` (``"a op b="``,
    legal steps only), and every model of ``writers`` writes the result greedily there. Per
    writer and per state of the answer before that step (:func:`prefix_kind`), the share of
    results that are ``right`` (``a op b``), the ``target`` instead (when it is not right), or
    ``other``; and ``n``, the number of cut answers in that state."""
    problems = [L.answer_problem(e.answer) for e in examples]
    sols = [C.solutions(p) for p, _ in problems]
    texts = _texts(tokenizer, _run(source, [e.prompt_ids for e in examples], _cfg(32, 1.0, k), seed, mesh))
    cuts = []
    for r, text in enumerate(texts):
        (problem, fmt), words = problems[r // k], text.split()
        m = _OPERANDS.match(words[step]) if fmt == "forward" and len(words) > step else None
        if m is None:
            continue
        true = C.apply(int(m.group(1)), m.group(2), int(m.group(3)))
        if true is None:
            continue
        state = prefix_kind(problem, words[:step], fmt, sols[r // k])
        prefix = " ".join(words[:step] + [m.group(0)])
        cuts.append((r // k, prefix, true, problem.target, state))
    out = {}
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    for name, model in writers.items():
        prompts = [tuple(examples[i].prompt_ids) + tuple(encode(pre)) for i, pre, *_ in cuts]
        ends = _texts(tokenizer, _run(model, prompts, _cfg(8, 0.0), seed, mesh)) if cuts else []
        table: dict[str, dict] = {}
        for (_, _, true, target, state), end in zip(cuts, ends):
            word = end.split(" ")[0]
            tag = "right" if word == str(true) else "target" if word == str(target) else "other"
            row = table.setdefault(state, {"right": 0, "target": 0, "other": 0, "n": 0})
            row[tag] += 1
            row["n"] += 1
        out[name] = {s: {t: (v / row["n"] if t != "n" else v) for t, v in row.items()}
                     for s, row in sorted(table.items())}
    return out


@functools.partial(jax.jit, static_argnums=(0, 2))
def _measures(s_graph, s_params, t_graph, t_params, tokens, mask, temperature):
    """Per token of ``tokens[:, 1:]``: the measures of ``MEASURES`` (student vs teacher)."""
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)

    def logp(graph, params):
        logits, _ = nnx.merge(graph, params)(tokens, positions, mask=mask)
        return jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32) / temperature, axis=-1)
    ls, lt = logp(s_graph, s_params), logp(t_graph, t_params)
    ps, pt = jnp.exp(ls), jnp.exp(lt)
    take = lambda lp: jnp.take_along_axis(lp, tokens[:, 1:, None], axis=-1)[..., 0]  # noqa: E731
    return {"reverse_kl": jnp.sum(ps * (ls - lt), -1), "forward_kl": jnp.sum(pt * (lt - ls), -1),
            "teacher_entropy": -jnp.sum(pt * lt, -1), "student_entropy": -jnp.sum(ps * ls, -1),
            "advantage": take(lt) - take(ls), "teacher_confidence": jnp.exp(jnp.max(lt, -1))}


def token_table(student, teacher, examples, tokenizer, *, k: int = 4, seed: int = 0,
                temperature: float = 1.0, max_new_tokens: int = 32, mesh=None) -> dict:
    """The per-token measures on ``k`` samples per problem from ``student``, averaged overall, by
    role (``token_roles``, plus ``eos``), by the state of the answer before the token's step
    (``prefix_kind`` of the earlier words), and by completion position."""
    problems = [L.answer_problem(e.answer) for e in examples]
    roll = _run(student, [e.prompt_ids for e in examples], _cfg(max_new_tokens, temperature, k),
                seed, mesh)
    P = roll.prompt_len
    values = jax.device_get(_measures(student[0], student[1], teacher[0], teacher[1], roll.tokens,
                                      roll.mask, temperature))
    values = {m: v[:, P - 1:] for m, v in values.items()}  # predictions of completion tokens
    tokens, cmask = np.asarray(roll.tokens)[:, P:], np.asarray(roll.completion_mask)[:, P:]
    groups: dict[str, dict[str, list]] = {"overall": {}, "role": {}, "state": {}}
    per_position = {m: [[] for _ in range(tokens.shape[1])] for m in MEASURES}
    sols = [C.solutions(p) for p, _ in problems]
    for r in range(tokens.shape[0]):
        (problem, fmt), i = problems[r // k], r // k
        ids = [int(t) for t in tokens[r][cmask[r]]]
        # One character per token (the lab's tokenizer); a special token stands as a character
        # that breaks its word, so roles stay aligned with the tokens.
        chars = ["" if t == EOS_ID else (tokenizer.convert_ids_to_tokens(t) if t >= len(SPECIALS) else "\x00")
                 for t in ids]
        text = "".join(chars)
        roles = token_roles(text, fmt) + ["eos"] * (len(ids) - len(text))
        words, states, w, kind = text.split(" "), [], 0, "on_path"
        for role in roles:  # the state before each character's step (the EOS: after all)
            if role in ("separator", "eos"):
                w = len(words) if role == "eos" else w + 1
                kind = prefix_kind(problem, [x for x in words[:w] if x], fmt, sols[i])
            states.append(kind)
        for n, (role, state) in enumerate(zip(roles, states)):
            for m in MEASURES:
                x = float(values[m][r, n])
                for group, name in (("overall", "all"), ("role", role), ("state", state)):
                    groups[group].setdefault(name, {}).setdefault(m, []).append(x)
                per_position[m][n].append(x)
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    out = {g: {name: {m: mean(v) for m, v in by.items()} | {"tokens": len(by[MEASURES[0]])}
               for name, by in sorted(d.items())} for g, d in groups.items()}
    out["position"] = {m: [mean(x) for x in per_position[m]] for m in MEASURES}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a lab data directory (tokenizer/, test.jsonl)")
    ap.add_argument("--student", required=True, help="the student's Hugging Face checkpoint")
    ap.add_argument("--teacher", required=True, help="the teacher's Hugging Face checkpoint")
    ap.add_argument("--problems", type=int, default=256)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--depth", type=int, default=1, help="steps kept of each prefix")
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args(argv)
    import os

    from opd_jax import process
    process.prepare()  # allocator policy and compilation cache, before JAX starts

    from opd_jax.config import write_json
    from opd_jax.data import load_examples
    from opd_jax.models import from_pretrained, load_tokenizer
    tok = load_tokenizer(os.path.join(a.data, "tokenizer"))
    test = load_examples(os.path.join(a.data, "test.jsonl"), tokenizer=tok, max_prompt_len=256)[:a.problems]
    models = {n: nnx.split(from_pretrained(p), nnx.Param) for n, p in (("student", a.student),
                                                                       ("teacher", a.teacher))}
    result = {"problems": len(test), "k": a.k, "depth": a.depth}
    for src in ("student", "teacher"):
        result[f"{src}_prefixes"] = continuations(models[src], models, test, tok, depth=a.depth, k=a.k)
    result["tokens"] = token_table(models["student"], models["teacher"], test, tok, k=a.k)
    for step in (0, 1):
        result[f"results_step{step + 1}"] = written_results(models["student"], models, test, tok,
                                                            step=step, k=a.k)
    for src in ("student", "teacher"):
        c = result[f"{src}_prefixes"]
        print(f"prefixes of {a.depth} step(s) sampled from the {src}: " + "  ".join(
            f"{x} {v:.3f}" for x, v in c["kinds"].items()))
        print("   finished correctly from its on-path prefixes by: " + "  ".join(
            f"{n} {v:.3f}" for n, v in c["finished_correctly"].items()))
    for group in ("role", "state"):
        print(f"per token of the student's samples, by {group}:")
        for name, row in result["tokens"][group].items():
            print(f"  {name:<11} " + "  ".join(f"{m} {row[m]:.3f}" for m in MEASURES)
                  + f"  tokens {row['tokens']}")
    pos = result["tokens"]["position"]
    print("by completion position (0-based; SFD: the teacher's confidence along the student's prefix):")
    for m in ("teacher_confidence", "teacher_entropy", "student_entropy"):
        print(f"  {m:<18} " + " ".join(f"{v:.2f}" for v in pos[m] if np.isfinite(v)))
    for step in (0, 1):
        print(f"results written after the operands of step {step + 1} of the student's samples "
              "(greedy), by the state before that step:")
        for name, table in result[f"results_step{step + 1}"].items():
            for state, row in table.items():
                print(f"  {name:<8} {state:<10} right {row['right']:.3f}  target {row['target']:.3f}"
                      f"  other {row['other']:.3f}  n {row['n']}")
    if a.out:
        write_json(result, a.out)


if __name__ == "__main__":
    main()
