"""The wire formats of a served teacher: asking for the log-probs of given tokens, and the answers.

Two protocols, as the engines document them:

- ``"openai"``: the OpenAI-compatible completions endpoint, ``POST /v1/completions``, with
  vLLM's ``prompt_logprobs`` extension. The request holds a batch of token-id prompts
  (``"prompt": [[ids], ...]``); ``choices[i].prompt_logprobs`` is one entry per prompt token:
  ``null`` for the first, then ``{"<token id>": {"logprob": x, "rank": r, ...}}`` holding the
  ``prompt_logprobs`` most likely tokens at that position *and* the prompt's own token (so
  ``k`` or ``k + 1`` entries). ``rank`` is the token's 1-based rank in the vocabulary.
- ``"sglang"``: SGLang's native ``POST /generate`` with ``input_ids``, ``return_logprob``,
  ``logprob_start_len: 0``, ``top_logprobs_num`` and ``max_new_tokens: 0``; each answer's
  ``meta_info`` holds ``input_token_logprobs`` (``[logprob, token id, text]`` per prompt token,
  the first logprob ``null``) and ``input_top_logprobs`` (a list of such triples per position).

A look-ahead (LGR's rewards, :mod:`opd_jax.teachers.lookahead`) asks instead for the most likely
next token's log-prob after each sequence (:func:`next_request`, :func:`parse_next`): one
generated token with its top log-prob (``logprobs: 1``; SGLang: ``top_logprobs_num: 1`` on one new
token), which the engines return without scoring the prompt's own positions.

The functions here are pure (dicts in, arrays out) and shared by the client
(:mod:`opd_jax.teachers.served`) and our own server (:mod:`opd_jax.serve`). A malformed answer
raises :class:`MalformedResponse` naming the field at fault.
"""

import dataclasses
import math

import numpy as np

APIS = ("openai", "sglang")
ENDPOINTS = {"openai": "/v1/completions", "sglang": "/generate"}


class MalformedResponse(ValueError):
    """A server's answer does not have the documented shape; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Scores:
    """A served teacher's scores of the tokens ``[start, len(sequence))`` of one sequence."""
    logp: np.ndarray  # float32 [n]: log-prob of each scored token
    topk_ids: np.ndarray  # int32 [n, K]: the teacher's K most likely tokens, by decreasing log-prob
    topk_logp: np.ndarray  # float32 [n, K]


def request(api: str, model: str, sequences: list[list[int]], top_k: int) -> dict:
    """The request body that asks for every position's top-``top_k`` log-probs of
    ``sequences`` (token ids), at temperature 1, generating nothing."""
    if api == "openai":  # vLLM generates at least one token; it is ignored
        return {"model": model, "prompt": sequences, "max_tokens": 1, "temperature": 1.0,
                "prompt_logprobs": top_k}
    return {"input_ids": sequences, "return_logprob": True, "logprob_start_len": 0,
            "top_logprobs_num": top_k, "return_text_in_logprobs": False,
            "sampling_params": {"max_new_tokens": 0, "temperature": 1.0}}


def _number(x, field: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x) or x > 1e-4:
        raise MalformedResponse(f"{field}: expected a log-probability (a number <= 0), got {x!r}")
    return float(x)


def _token_id(x, field: str, vocab: int) -> int:
    try:
        t = int(x)
    except (TypeError, ValueError):
        raise MalformedResponse(f"{field}: expected a token id, got {x!r}") from None
    if isinstance(x, bool) or not 0 <= t < vocab:
        raise MalformedResponse(f"{field}: token id {x!r} is outside the student's vocabulary "
                                f"[0, {vocab}); does the server run the teacher the run names?")
    return t


def _top(entries: list[tuple[int, float, int | None]], top_k: int, field: str):
    """The ``top_k`` most likely of ``(id, logprob, rank)`` entries, by rank when every entry
    has one, else by log-prob."""
    if all(r is not None for _, _, r in entries):
        entries = sorted(entries, key=lambda e: e[2])
    else:
        entries = sorted(entries, key=lambda e: -e[1])
    if len(entries) < top_k:
        raise MalformedResponse(f"{field}: {len(entries)} log-probs, fewer than the {top_k} asked "
                                "for (vLLM: start it with --max-logprobs >= teacher.served.top_k)")
    return [e[0] for e in entries[:top_k]], [e[1] for e in entries[:top_k]]


def _openai_position(entry, token: int, top_k: int, vocab: int, field: str):
    if not isinstance(entry, dict):
        raise MalformedResponse(f"{field}: expected an object of token id -> log-prob, got "
                                f"{type(entry).__name__}")
    parsed = []
    for key, value in entry.items():
        where = f"{field}[{key!r}]"
        t = _token_id(key, where, vocab)
        if isinstance(value, dict):
            if "logprob" not in value:
                raise MalformedResponse(f"{where}: no 'logprob' (fields: {sorted(value)})")
            rank = value.get("rank")
            parsed.append((t, _number(value["logprob"], f"{where}.logprob"),
                           rank if isinstance(rank, int) and not isinstance(rank, bool) else None))
        else:
            parsed.append((t, _number(value, where), None))
    own = [lp for t, lp, _ in parsed if t == token]
    if not own:
        raise MalformedResponse(f"{field}: no log-prob of the prompt's token {token}")
    return own[0], _top(parsed, top_k, field)


def _choices(body, count: int) -> list:
    """An OpenAI-style answer's ``choices``, one per prompt, in prompt order (by ``index``)."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or len(choices) != count:
        got = len(choices) if isinstance(choices, list) else type(choices).__name__
        raise MalformedResponse(f"choices: expected a list of {count} (one per prompt), got {got}")
    if all(isinstance(c, dict) and isinstance(c.get("index"), int) for c in choices):
        choices = sorted(choices, key=lambda c: c["index"])
    return choices


def _results(body, count: int) -> list:
    """An SGLang answer's results, one per input (a single input's answer is the object itself)."""
    items = [body] if isinstance(body, dict) else body
    if not isinstance(items, list) or len(items) != count:
        got = len(items) if isinstance(items, list) else type(items).__name__
        raise MalformedResponse(f"the answer: expected a list of {count} results (one per input), "
                                f"got {got}")
    return items


def _parse_openai(body, sequences, starts, top_k, vocab) -> list[Scores]:
    out = []
    for i, (choice, seq, start) in enumerate(zip(_choices(body, len(sequences)), sequences, starts)):
        field = f"choices[{i}].prompt_logprobs"
        plp = choice.get("prompt_logprobs") if isinstance(choice, dict) else None
        if not isinstance(plp, list) or len(plp) != len(seq):
            got = len(plp) if isinstance(plp, list) else repr(plp)[:80]
            raise MalformedResponse(f"{field}: expected a list of {len(seq)} entries (one per "
                                    f"prompt token), got {got}")
        rows = [_openai_position(plp[j], seq[j], top_k, vocab, f"{field}[{j}]")
                for j in range(start, len(seq))]
        out.append(_scores(rows, top_k))
    return out


def _triple(x, field: str, vocab: int):
    if not isinstance(x, (list, tuple)) or len(x) < 2:
        raise MalformedResponse(f"{field}: expected [logprob, token id, text], got {x!r}"[:200])
    return _number(x[0], f"{field}[0]"), _token_id(x[1], f"{field}[1]", vocab)


def _parse_sglang(body, sequences, starts, top_k, vocab) -> list[Scores]:
    out = []
    for i, (item, seq, start) in enumerate(zip(_results(body, len(sequences)), sequences, starts)):
        meta = item.get("meta_info") if isinstance(item, dict) else None
        if not isinstance(meta, dict):
            raise MalformedResponse(f"[{i}].meta_info: missing")
        tok, top = meta.get("input_token_logprobs"), meta.get("input_top_logprobs")
        for name, x in (("input_token_logprobs", tok), ("input_top_logprobs", top)):
            if not isinstance(x, list) or len(x) != len(seq):
                got = len(x) if isinstance(x, list) else repr(x)[:80]
                raise MalformedResponse(f"[{i}].meta_info.{name}: expected {len(seq)} entries "
                                        f"(one per input token), got {got}")
        rows = []
        for j in range(start, len(seq)):
            field = f"[{i}].meta_info.input_token_logprobs[{j}]"
            lp, t = _triple(tok[j], field, vocab)
            if t != seq[j]:
                raise MalformedResponse(f"{field}: token id {t}, but the input has {seq[j]}")
            field = f"[{i}].meta_info.input_top_logprobs[{j}]"
            if not isinstance(top[j], list):
                raise MalformedResponse(f"{field}: expected a list, got {top[j]!r}"[:200])
            entries = [(*reversed(_triple(x, f"{field}[{n}]", vocab)), None)
                       for n, x in enumerate(top[j])]
            rows.append((lp, _top(entries, top_k, field)))
        out.append(_scores(rows, top_k))
    return out


def _scores(rows, top_k: int) -> Scores:
    logp = np.array([lp for lp, _ in rows], np.float32)
    ids = np.array([ids for _, (ids, _) in rows], np.int32).reshape(len(rows), top_k)
    top = np.array([lps for _, (_, lps) in rows], np.float32).reshape(len(rows), top_k)
    return Scores(logp, ids, top)


def parse(api: str, body, sequences: list[list[int]], starts: list[int], top_k: int,
          vocab: int) -> list[Scores]:
    """The scores of tokens ``[starts[i], len(sequences[i]))`` of every sequence, from the
    server's answer ``body`` (decoded JSON) to :func:`request`."""
    if api == "openai":
        return _parse_openai(body, sequences, starts, top_k, vocab)
    return _parse_sglang(body, sequences, starts, top_k, vocab)


def next_request(api: str, model: str, sequences: list[list[int]]) -> dict:
    """The request body that asks, after each of ``sequences``, for the log-prob of the most
    likely next token (one generated token and its top log-prob, at temperature 1)."""
    if api == "openai":
        return {"model": model, "prompt": sequences, "max_tokens": 1, "temperature": 1.0,
                "logprobs": 1}
    return {"input_ids": sequences, "return_logprob": True, "top_logprobs_num": 1,
            "return_text_in_logprobs": False,
            "sampling_params": {"max_new_tokens": 1, "temperature": 1.0}}


def parse_next(api: str, body, count: int) -> np.ndarray:
    """float32 ``[count]``: the top next-token log-prob after each sequence, from the answer
    ``body`` to :func:`next_request` (the largest of the first generated token's top log-probs:
    an answer may add the sampled token's own)."""
    if api == "openai":
        out = []
        for i, c in enumerate(_choices(body, count)):
            field = f"choices[{i}].logprobs.top_logprobs"
            top = ((c.get("logprobs") or {}) if isinstance(c, dict) else {}).get("top_logprobs")
            if not isinstance(top, list) or not top or not isinstance(top[0], dict) or not top[0]:
                raise MalformedResponse(f"{field}: expected a list whose first entry maps tokens "
                                        f"to log-probs, got {repr(top)[:80]}")
            out.append(max(_number(v, f"{field}[0][{k!r}]") for k, v in top[0].items()))
        return np.array(out, np.float32)
    out = []
    for i, item in enumerate(_results(body, count)):
        field = f"[{i}].meta_info.output_top_logprobs"
        top = ((item.get("meta_info") or {}) if isinstance(item, dict) else {}).get(
            "output_top_logprobs")
        if not isinstance(top, list) or not top or not isinstance(top[0], list) or not top[0]:
            raise MalformedResponse(f"{field}: expected a list of the generated tokens' top "
                                    f"log-probs, got {repr(top)[:80]}")
        out.append(max(_triple_logprob(x, f"{field}[0][{n}]") for n, x in enumerate(top[0])))
    return np.array(out, np.float32)


def _triple_logprob(x, field: str) -> float:
    if not isinstance(x, (list, tuple)) or not x:
        raise MalformedResponse(f"{field}: expected [logprob, token id, text], got {x!r}"[:200])
    return _number(x[0], f"{field}[0]")


# ------------------------------------------------------------------ the server's side


def openai_choice(index: int, tokens, token_logp, token_rank, topk_ids, topk_logp) -> dict:
    """One ``choices`` entry of a completions answer carrying ``prompt_logprobs``, as vLLM
    writes it: ``null`` for the first token, then for token ``j`` the top-k of its position and
    the token itself. ``token_logp``/``token_rank`` ``[L - 1]`` score ``tokens[1:]``;
    ``topk_ids``/``topk_logp`` are ``[L - 1, K]``."""
    plp = [None]
    for j, t in enumerate(tokens[1:]):
        entry = {str(int(i)): {"logprob": float(lp), "rank": r + 1}
                 for r, (i, lp) in enumerate(zip(topk_ids[j], topk_logp[j]))}
        entry.setdefault(str(int(t)), {"logprob": float(token_logp[j]),
                                       "rank": int(token_rank[j])})
        plp.append(entry)
    return {"index": index, "text": "", "logprobs": None, "finish_reason": "length",
            "prompt_logprobs": plp}


def sglang_item(tokens, token_logp, topk_ids, topk_logp) -> dict:
    """One result of SGLang's ``/generate`` with input log-probs from position 0."""
    tok = [[None, int(tokens[0]), None]] + [[float(lp), int(t), None]
                                            for lp, t in zip(token_logp, tokens[1:])]
    top = [None] + [[[float(lp), int(t), None] for t, lp in zip(ids, lps)]
                    for ids, lps in zip(topk_ids, topk_logp)]
    return {"text": "", "meta_info": {"prompt_tokens": len(tokens), "completion_tokens": 0,
                                      "input_token_logprobs": tok, "input_top_logprobs": top}}


def openai_next_choice(index: int, token: int, logp: float) -> dict:
    """One ``choices`` entry of a completions answer that generated ``token`` with ``logprobs: 1``:
    its log-prob, which is also the top one (vLLM's ``token_id:<id>`` token names)."""
    name = f"token_id:{int(token)}"
    return {"index": index, "text": "", "finish_reason": "length",
            "logprobs": {"tokens": [name], "token_logprobs": [float(logp)],
                         "top_logprobs": [{name: float(logp)}], "text_offset": [0]}}


def sglang_next_item(length: int, token: int, logp: float) -> dict:
    """One result of SGLang's ``/generate`` that generated ``token`` after ``length`` input tokens,
    with its top log-prob."""
    entry = [float(logp), int(token), None]
    return {"text": "", "meta_info": {"prompt_tokens": length, "completion_tokens": 1,
                                      "output_token_logprobs": [entry],
                                      "output_top_logprobs": [[entry]]}}
