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
- :func:`align` (:func:`align_many` for a batch): a completion's teacher tokens and both sides'
  span indices;
- :func:`spread`: the teacher's per-span log-probs moved onto the student's tokens.
"""

from collections.abc import Sequence

import numpy as np

WINDOW = 8  # tokens decoded before the one being read (covers merges a decoder makes across tokens)
REPLACEMENT = "\ufffd"  # what a decoder writes for an incomplete UTF-8 sequence


def decode_many(tokenizer, seqs: list[list[int]]) -> list[str]:
    """Each of ``seqs`` decoded as the tokenizer writes it (special tokens kept). A fast
    tokenizer's Rust backend decodes them all in one call, without ``transformers``' optional
    clean-up of spaces (a completion's text is its tokens' strings, as sampled)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.decode_batch(seqs, skip_special_tokens=False)
    return [tokenizer.decode(s) for s in seqs]


def token_pieces(tokenizer, ids: Sequence[int]) -> tuple[list[str], bool]:
    """``(pieces, exact)``: the text each token of ``ids`` adds to their decoded text, with
    ``"".join(pieces)`` that text (:func:`decode_many`).

    Each piece is read as the difference between decoding a short window of tokens with and
    without it (so decoders that treat the first token of a text specially, such as
    SentencePiece's leading space, agree on both sides). A token that ends inside a character
    adds nothing and the next one the whole character. Where that does not reproduce the whole
    decoded text, the whole text is given to the last token (``exact`` False): one span then.
    """
    return pieces_many(tokenizer, [ids])[0]


def pieces_many(tokenizer, rows: Sequence[Sequence[int]]) -> list[tuple[list[str], bool]]:
    """:func:`token_pieces` of each row, their windows decoded in one call."""
    rows = [[int(t) for t in ids] for ids in rows]
    seqs = []
    for ids in rows:
        starts = [k - WINDOW if k > WINDOW else 0 for k in range(len(ids))]
        seqs += [ids] + [ids[a:k] for k, a in enumerate(starts)]
        seqs += [ids[a:k + 1] for k, a in enumerate(starts)]
    texts, out, at = decode_many(tokenizer, seqs), [], 0
    for ids in rows:
        n = len(ids)
        out.append(_pieces(tokenizer, ids, texts[at], texts[at + 1:at + n + 1],
                           texts[at + n + 1:at + 2 * n + 1]))
        at += 2 * n + 1
    return out


def _pieces(tokenizer, ids, full, fast_before, fast_upto) -> tuple[list[str], bool]:
    n = len(ids)
    pieces, done = [""] * n, 0  # tokens before ``done`` have their pieces
    for k in range(n):
        if done == k:  # the windows decoded beforehand
            before, upto = fast_before[k], fast_upto[k]
        else:  # after a token that ended inside a character
            a = max(0, done - WINDOW)
            before, upto = decode_many(tokenizer, [ids[a:done], ids[a:k + 1]])
        if (upto.endswith(REPLACEMENT) and k + 1 < n) or not upto.startswith(before):
            continue  # token k ends inside a character: it joins the next one
        pieces[k], done = upto[len(before):], k + 1
    if "".join(pieces) != full:
        return [""] * (n - 1) + [full] if ids else [], False
    return pieces, True


def _ends(pieces: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each token's span end (the end of the first token at or after it that adds text) and
    the cut points (ends of tokens that add text)."""
    cum = np.cumsum([len(p) for p in pieces], dtype=np.int64)
    if not len(cum):
        return cum, cum
    adds = np.array([bool(p) for p in pieces])
    eff = np.minimum.accumulate(np.where(adds, cum, cum[-1])[::-1])[::-1]
    return eff, cum[adds]  # increasing: each adds at least one character


def teacher_ends(offsets: Sequence[tuple[int, int]], total: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_ends` of the teacher's tokens from their character ``offsets``: a token ending
    where the next one starts or later is a cut; tokens that share a character (bytes of one
    character) end with the last of them."""
    off = np.asarray(offsets, np.int64).reshape(-1, 2)
    ends = np.minimum(off[:, 1], total)
    is_cut = np.append(off[1:, 0] >= off[:-1, 1], True) if len(off) else np.zeros(0, bool)
    cuts = np.unique(ends[is_cut])
    ordered = np.union1d(cuts, [total])
    eff = ordered[np.minimum(np.searchsorted(ordered, ends), len(ordered) - 1)]
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
    return align_many(student_tokenizer, teacher_tokenizer, [ids], [eos], teacher_eos)[0]


def align_many(student_tokenizer, teacher_tokenizer, rows: Sequence[Sequence[int]],
               eos: Sequence[bool], teacher_eos: int) -> list[dict]:
    """:func:`align` of each row; each side's tokenizer is called once for all of them."""
    bodies = [list(ids[:-1] if e else ids) for ids, e in zip(rows, eos)]
    pieces = pieces_many(student_tokenizer, bodies)
    texts = ["".join(p) for p, _ in pieces]
    enc = teacher_tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for (p, exact), text, t_ids, offsets, e in zip(pieces, texts, enc["input_ids"],
                                                   enc["offset_mapping"], eos):
        s_eff, s_cuts = _ends(p)
        t_eff, t_cuts = teacher_ends(offsets, len(text))
        common = np.intersect1d(s_cuts, t_cuts, assume_unique=True)
        if text:
            common = np.union1d(common, [len(text)])
        last = len(common) - 1
        s_span = np.minimum(np.searchsorted(common, s_eff), last).tolist()
        t_span = np.minimum(np.searchsorted(common, t_eff), last).tolist()
        t_ids, spans = [int(t) for t in t_ids], len(common)
        if e:
            s_span.append(spans)
            t_span.append(spans)
            t_ids.append(int(teacher_eos))
            spans += 1
        out.append({"teacher_ids": t_ids, "student_span": s_span, "teacher_span": t_span,
                    "spans": spans, "exact": exact})
    return out


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
