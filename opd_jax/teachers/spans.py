"""Text spans shared by two tokenizations of one completion (a teacher with its own tokenizer).

The student's completion is decoded to text and encoded again by the teacher's tokenizer. The
two token sequences cover the same text but cut it in different places; wherever both cut at
the same character, the text splits into *spans*, each holding one or more whole tokens of
either side. Summed over a span, both sides' log-probs are of the same text, so
``log q(span) - log p(span)`` is the per-span term of ``log q(y) - log p(y)`` (the sequence's
sampled-token reverse KL) whatever the tokenizers. A span of one token on each side (most of
them where the vocabularies share their common words) gives back the usual per-token term.

A token's probability also says how the text does *not* go on: a tokenizer that reads ``"28"``
as one token gives the token ``"2"`` only where no digit follows, so a teacher's ``log q("2")``
is the probability that the number *is* 2, while a digit-by-digit student's ``log p("2")`` is
the probability that it starts with 2. Cut there, the two spans are of different events, and
their log-ratio is biased against every multi-digit number (the lab's ``cross_tokenizer``
experiment: the student stops writing them). With ``cuts="consistent"`` (the default) a common
cut counts only where the two tokens ending at it admit the same continuations: the same set of
:data:`PROBE` characters, appended to each token's text, changes how that text is tokenized
(:class:`Extensions`). Elsewhere the spans run on to the next such cut (``"2="`` is then one
span on both sides, the same event); an end-of-sequence token joins the last span where the
text's end is not such a cut. ``cuts="text"`` keeps every common character cut.

Host-side functions on plain lists and NumPy arrays:

- :func:`token_pieces`: the text each sampled token adds (a token that ends inside a character,
  a partial UTF-8 sequence of a byte-level vocabulary, adds nothing; the next one adds the
  whole character);
- :func:`align` (:func:`align_many` for a batch): a completion's teacher tokens and both sides'
  span indices;
- :func:`spread`: the teacher's per-span log-probs moved onto the student's tokens.
"""

import string
from collections.abc import Sequence

import numpy as np

WINDOW = 8  # tokens decoded before the one being read (covers merges a decoder makes across tokens)
REPLACEMENT = "\ufffd"  # what a decoder writes for an incomplete UTF-8 sequence
# the characters a token's continuations are probed with (printable ASCII, no form feeds)
PROBE = tuple(c for c in string.printable if c not in "\x0b\x0c\r")
CUTS = ("consistent", "text")


def encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each of ``texts`` encoded without special tokens (one Rust call for a fast tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


class Extensions:
    """For one tokenizer: the :data:`PROBE` characters that, appended to a token's text, change
    how that text is tokenized (the token would have grown into another), cached by text."""

    def __init__(self, tokenizer, probe: Sequence[str] = PROBE):
        self.tokenizer, self.probe, self.cache = tokenizer, tuple(probe), {}

    def __call__(self, pieces: Sequence[str]) -> list[frozenset]:
        new = sorted({p for p in pieces if p not in self.cache})
        if new:
            k = len(self.probe)
            enc = encode_many(self.tokenizer, new + [p + c for p in new for c in self.probe])
            for i, p in enumerate(new):
                base, grown = enc[i], enc[len(new) + i * k:len(new) + (i + 1) * k]
                self.cache[p] = frozenset(c for c, g in zip(self.probe, grown) if g[:len(base)] != base)
        return [self.cache[p] for p in pieces]


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
          teacher_eos: int, cuts: str = "consistent") -> dict:
    """One completion ``ids`` (the student's tokens, the last an end-of-sequence token if
    ``eos``) as the teacher reads it, and the spans both sides share (``cuts``: see the module
    docstring).

    Returns a dict: ``teacher_ids`` (the text encoded by the teacher's tokenizer, then
    ``teacher_eos`` if ``eos``), ``student_span`` and ``teacher_span`` (each token's span index,
    spans numbered from 0 in text order; the end-of-sequence tokens end the last span, or form
    one of their own), ``spans`` (their number) and ``exact`` (False where the student's pieces
    fell back to one span, see :func:`token_pieces`).
    """
    return align_many(student_tokenizer, teacher_tokenizer, [ids], [eos], teacher_eos, cuts=cuts)[0]


def align_many(student_tokenizer, teacher_tokenizer, rows: Sequence[Sequence[int]],
               eos: Sequence[bool], teacher_eos: int, *, cuts: str = "consistent",
               extensions: tuple[Extensions, Extensions] | None = None) -> list[dict]:
    """:func:`align` of each row; each side's tokenizer is called once for all of them.
    ``extensions``: the two sides' :class:`Extensions` (caches kept between calls)."""
    if cuts not in CUTS:
        raise ValueError(f"unknown span cuts {cuts!r}; known: {CUTS}")
    if cuts == "consistent" and extensions is None:
        extensions = (Extensions(student_tokenizer), Extensions(teacher_tokenizer))
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
        closed = True  # the text's end is a consistent cut
        if cuts == "consistent" and len(common):
            keep = _consistent(common, p, text, offsets, extensions)
            if common[-1] == len(text):
                closed = bool(keep[-1])
            common = common[keep]
        if text:
            common = np.union1d(common, [len(text)])
        last = len(common) - 1
        s_span = np.minimum(np.searchsorted(common, s_eff), last).tolist()
        t_span = np.minimum(np.searchsorted(common, t_eff), last).tolist()
        t_ids, spans = [int(t) for t in t_ids], len(common)
        if e:
            joins = not closed and spans > 0  # the end-of-sequence token ends the last span
            s_span.append(spans - 1 if joins else spans)
            t_span.append(spans - 1 if joins else spans)
            t_ids.append(int(teacher_eos))
            spans += 0 if joins else 1
        out.append({"teacher_ids": t_ids, "student_span": s_span, "teacher_span": t_span,
                    "spans": spans, "exact": exact})
    return out


def _consistent(common: np.ndarray, pieces: Sequence[str], text: str, offsets,
                extensions: tuple[Extensions, Extensions]) -> np.ndarray:
    """Which of the common cuts end tokens with the same continuations on both sides."""
    cum = np.cumsum([len(x) for x in pieces])
    s_at = {int(c): pieces[k] for k, c in enumerate(cum) if pieces[k]}  # the token ending at c
    t_at = {}
    for start, end in offsets:
        t_at[min(int(end), len(text))] = text[start:end]
    cs = [int(c) for c in common]
    s_ext = extensions[0]([s_at[c] for c in cs])
    t_ext = extensions[1]([t_at[c] for c in cs])
    return np.array([a == b for a, b in zip(s_ext, t_ext)], bool)


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
