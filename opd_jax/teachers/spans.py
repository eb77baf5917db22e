"""Text spans shared by two tokenizations of one completion (a teacher with its own tokenizer).

The student's completion is decoded to text and encoded again by the teacher's tokenizer. The
two token sequences cover the same text but cut it in different places; wherever both cut at
the same character, the text splits into *spans*, each holding one or more whole tokens of
either side. Summed over a span, both sides' log-probs are of the same text, so
``log q(span) - log p(span)`` is the per-span term of ``log q(y) - log p(y)`` (the sequence's
sampled-token reverse KL) whatever the tokenizers. A span of one token on each side (most of
them where the vocabularies share their common words) gives back the usual per-token term.

Host-side functions on plain lists and NumPy arrays:

- :func:`token_pieces`: the text each sampled token adds (a token that ends inside a character,
  a partial UTF-8 sequence of a byte-level vocabulary, adds nothing; the next one adds the
  whole character);
- :func:`align`: a completion's teacher tokens and both sides' span indices;
- :func:`spread`: the teacher's per-span log-probs moved onto the student's tokens.
"""

import bisect
from collections.abc import Sequence

import numpy as np

WINDOW = 8  # tokens decoded before the one being read (covers merges a decoder makes across tokens)
REPLACEMENT = "\ufffd"  # what a decoder writes for an incomplete UTF-8 sequence


def token_pieces(tokenizer, ids: Sequence[int]) -> tuple[list[str], bool]:
    """``(pieces, exact)``: the text each token of ``ids`` adds to their decoded text, with
    ``"".join(pieces) == tokenizer.decode(ids)``.

    Each piece is read as the difference between decoding a short window of tokens with and
    without it (so decoders that treat the first token of a text specially, such as
    SentencePiece's leading space, agree on both sides). Where that does not reproduce the whole
    decoded text, the whole text is given to the last token (``exact`` False): one span then.
    """
    ids = [int(t) for t in ids]
    full = tokenizer.decode(ids)
    pieces, done = [""] * len(ids), 0  # tokens before ``done`` have their pieces
    for k in range(len(ids)):
        a = max(0, done - WINDOW)
        before = tokenizer.decode(ids[a:done])
        upto = tokenizer.decode(ids[a:k + 1])
        if upto.endswith(REPLACEMENT) and not full.endswith(REPLACEMENT) or \
                not upto.startswith(before):
            continue  # token k ends inside a character: it joins the next one
        pieces[k], done = upto[len(before):], k + 1
    if "".join(pieces) != full:
        return [""] * (len(ids) - 1) + [full] if ids else [], False
    return pieces, True


def _ends(pieces: Sequence[str]) -> tuple[list[int], set[int]]:
    """Each token's span end (the end of the first token at or after it that adds text) and
    the cut points (ends of tokens that add text)."""
    cum = np.cumsum([len(p) for p in pieces]).tolist() if pieces else []
    total = cum[-1] if cum else 0
    eff, nxt = [total] * len(pieces), total
    for k in range(len(pieces) - 1, -1, -1):
        if pieces[k]:
            nxt = cum[k]
        eff[k] = nxt
    return eff, {c for c, p in zip(cum, pieces) if p}


def teacher_ends(offsets: Sequence[tuple[int, int]], total: int) -> tuple[list[int], set[int]]:
    """:func:`_ends` of the teacher's tokens from their character ``offsets``: a token ending
    where the next one starts or later is a cut; tokens that share a character (bytes of one
    character) end with the last of them."""
    cuts = {e for j, (_, e) in enumerate(offsets)
            if j + 1 == len(offsets) or offsets[j + 1][0] >= e}
    cuts = {min(c, total) for c in cuts}
    ordered = sorted(cuts | {total})
    eff = [ordered[min(bisect.bisect_left(ordered, min(e, total)), len(ordered) - 1)]
           for _, e in offsets]
    return eff, cuts


def align(student_tokenizer, teacher_tokenizer, ids: Sequence[int], *, eos: bool,
          teacher_eos: int) -> dict:
    """One completion ``ids`` (the student's tokens, the last an end-of-sequence token if
    ``eos``) as the teacher reads it, and the spans both sides share.

    Returns a dict: ``teacher_ids`` (the text encoded by the teacher's tokenizer, then
    ``teacher_eos`` if ``eos``), ``student_span`` and ``teacher_span`` (each token's span index,
    spans numbered from 0 in text order; the end-of-sequence tokens form the last span
    together), ``spans`` (their number) and ``exact`` (False where the student's pieces fell back
    to one span, see :func:`token_pieces`).
    """
    body = list(ids[:-1] if eos else ids)
    pieces, exact = token_pieces(student_tokenizer, body)
    text = "".join(pieces)
    enc = teacher_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    t_ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    s_eff, s_cuts = _ends(pieces)
    t_eff, t_cuts = teacher_ends(offsets, len(text))
    common = sorted((s_cuts & t_cuts) | ({len(text)} if text else set()))
    span = lambda e: min(bisect.bisect_left(common, e), len(common) - 1)  # noqa: E731
    s_span, t_span = [span(e) for e in s_eff], [span(e) for e in t_eff]
    spans = len(common)
    if eos:
        s_span.append(spans)
        t_span.append(spans)
        t_ids.append(int(teacher_eos))
        spans += 1
    return {"teacher_ids": t_ids, "student_span": s_span, "teacher_span": t_span, "spans": spans,
            "exact": exact}


def spread(teacher_logp: np.ndarray, teacher_span: np.ndarray, student_span: np.ndarray,
           student_logp: np.ndarray) -> np.ndarray:
    """The teacher's log-prob of each student token: the student's own ``student_logp`` plus an
    equal share of its span's ``log q(span) - log p(span)``.

    Rows of ``[B, Nt]`` teacher and ``[B, N]`` student arrays; a span index of -1 marks a
    position outside every span (padding; also teacher tokens cut off by the width, whose spans
    the caller masks out). Over a span the result sums to ``log q(span) - log p(span) +
    log p(span)``: one-token spans get exactly the teacher's token log-prob.
    """
    out = np.array(student_logp, np.float64, copy=True)
    for r in range(out.shape[0]):
        s, t = student_span[r], teacher_span[r]
        n = int(max(s.max(initial=-1), t.max(initial=-1))) + 1
        if n == 0:
            continue
        lq = np.zeros(n)
        np.add.at(lq, t[t >= 0], teacher_logp[r][t >= 0])
        lp, count = np.zeros(n), np.zeros(n)
        np.add.at(lp, s[s >= 0], student_logp[r][s >= 0])
        np.add.at(count, s[s >= 0], 1.0)
        share = (lq - lp) / np.maximum(count, 1.0)
        out[r, s >= 0] += share[s[s >= 0]]
    return out.astype(np.float32)
