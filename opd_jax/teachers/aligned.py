"""A local teacher with its own tokenizer (``teacher.kind="cross_tokenizer"``).

Each on-policy step the student's completions are decoded and encoded again by the teacher's
tokenizer; the teacher reads its own rendering of the record's prompt (the text of ``prompt`` or
``messages``, or ``teacher_prompt``/``teacher_messages`` when the record has them, through its
own chat template) followed by that completion, and scores its own tokens. Where both
tokenizations cut the text at the same character, and (``teacher.span_cuts="consistent"``, the
default) the two tokens ending there admit the same continuations, the completion splits into
spans (:mod:`opd_jax.teachers.spans`); each student token's teacher log-prob is its own log-prob plus an
equal share of its span's ``log q(span) - log p(span)``. One-token spans, the common case where
the vocabularies share a word, get the teacher's own token log-prob. The objective receives it
as a sparse teacher's ``teacher_logp``: recipes built on the sampled token's log-ratio run
(``opd``, ``iw_opd``, ``power_opd``, ...). ``objective=simct`` also gets, at each span's first
student token, the teacher's ``teacher.shared_topk`` most likely tokens among those both
vocabularies write alike (all of them at 0; ``teacher.shared_tokens="consistent"``: only those
the same characters also extend alike), as student ids, and its span's dimension
(:mod:`opd_jax.teachers.virtual`, :mod:`opd_jax.objectives.virtual_vocab`). Other recipes that
need the teacher's distribution over the student's vocabulary are refused at set-up.

With ``teacher.served.url`` the teacher is served (:mod:`opd_jax.teachers.served`: vLLM, SGLang
or ``python -m opd_jax.serve``) and only its tokenizer is local (``teacher.model.path``, checked
against the server's at start-up): the rows of its own prompt and tokens are sent as ids and the
server's log-probs of the completion tokens are spread the same way (sampled-token recipes, at
temperature 1).

The student's log-prob of its tokens is the sampler's record, so the run samples at the loss
temperature without truncation, on-policy; the set-up checks say so before any model is built.
Statistics of each scoring: ``xtok/tokens_per_span`` (student tokens per span),
``xtok/one_token_spans`` (the share of student tokens alone in their span), ``xtok/cut``
(completions whose teacher tokens did not fit ``teacher.token_ratio`` times the student's
width: their last spans are masked out) and ``xtok/inexact`` (completions read as one span).
"""

import math

import numpy as np

import opd_jax.objectives as O
from opd_jax.objectives.base import TEACHER, TEACHER_LOGITS, TEACHER_TOPK
from opd_jax import data as D
from opd_jax.sampling.sampler import model_config
from opd_jax.teachers import spans as S
from opd_jax.teachers import virtual as VT
from opd_jax.teachers.base import Runtime, Student, Teacher
from opd_jax.teachers.local import sequence_logp
from opd_jax.teachers.served import ServedTeacher
from opd_jax.training.batches import join
from opd_jax.training.build import build_model

_TEACHER_INPUTS = {TEACHER, TEACHER_LOGITS, TEACHER_TOPK}


def check_run(exp) -> None:
    """Refuse, before any model is built, what a teacher with another tokenizer cannot feed."""
    spec, s, name = exp.teacher, exp.sampler, O.recipe_name(exp.objective)
    problems = []
    if not spec.model.path:
        problems.append("a teacher checkpoint with its tokenizer (teacher.model.path)")
    try:  # recipes that need full teacher logits fail to build without them
        obj = O.build_objective(exp.objective, dense_teacher=False)
        reads = any(_TEACHER_INPUTS & set(f.inputs) for f in obj.features.values())
    except ValueError:
        reads = True
    virtual = isinstance(exp.objective, O.SimCTConfig)
    if (spec.shared_topk or spec.shared_tokens != "text") and not virtual:
        problems.append("teacher.shared_topk=0 and shared_tokens='text' (only objective=simct reads them)")
    if reads and not virtual:
        problems.append(f"an objective built on the sampled token's teacher log-prob ({name!r} reads "
                        "the teacher's distribution over the student's vocabulary, which another "
                        "tokenizer does not give; e.g. objective=opd, iw_opd or power_opd)")
    if exp.loop.lmbda < 1:  # (cold starts and teacher mixing: refused by refusals(), first)
        problems.append("on-policy steps only (loop.lmbda=1)")
    if s.temperature != exp.objective.temperature or s.top_k or s.top_p < 1 or s.min_p > 0:
        problems.append(f"sampling at the loss temperature without truncation (sampler.temperature="
                        f"{exp.objective.temperature} like objective.temperature, top_k=0, top_p=1, "
                        f"min_p=0; got {s.temperature}, {s.top_k}, {s.top_p}, {s.min_p}): the "
                        "student's log-probs are the sampler's")
    if exp.teacher.peers.on:
        problems.append("teacher.peers off")
    if spec.served.url and virtual:
        problems.append("a local teacher for objective=simct (a served teacher's top-k is over its "
                        "whole vocabulary, not the shared tokens; teacher.served.url unset)")
    if spec.served.url and exp.objective.temperature != 1:
        problems.append(f"objective.temperature=1 with a served teacher (engines return log-probs at "
                        f"temperature 1; got {exp.objective.temperature})")
    if problems:
        raise ValueError("teacher.kind='cross_tokenizer' needs " + "; ".join(problems))


def prompt_record(record: dict, where: str) -> dict:
    """The part of ``record`` the teacher reads as its prompt, as text fields for its tokenizer."""
    if "teacher_prompt" in record or "teacher_messages" in record:
        return record
    if isinstance(record.get("prompt"), str):
        return {"teacher_prompt": record["prompt"]}
    if isinstance(record.get("messages"), list) and record["messages"]:
        msgs = record["messages"]
        return {"teacher_messages": msgs[:-1] if msgs[-1].get("role") == "assistant" else msgs}
    raise D.DataError(f"{where}: a teacher with its own tokenizer reads the prompt as text "
                      "(`prompt`, `messages`, `teacher_prompt` or `teacher_messages`); this record "
                      "has token ids only")


def served_vocab(path: str, tokenizer) -> int:
    """The vocabulary a served teacher's token ids fall in: its checkpoint's ``vocab_size`` (often
    padded beyond the tokenizer) where ``path`` has a ``config.json``, else the tokenizer's size."""
    from opd_jax.models.hf_io import read_hf_config
    try:
        size = read_hf_config(path).get("vocab_size")
    except (FileNotFoundError, ValueError):  # a tokenizer without the model's config
        size = None
    return max(len(tokenizer), size if isinstance(size, int) else 0)


class CrossTokenizerTeacher(Teacher):
    """A frozen model, local or served, whose tokenizer differs from the student's (module docstring)."""
    sparse = True
    distribution = False

    def __init__(self, model, tokenizers, opts: D.TextOptions, examples, runtime: Runtime, *,
                 ratio: float, teacher_eos: int, cuts: str = "consistent", shared_topk: int | None = None,
                 shared_tokens: str = "text", span_logit: str = "logit"):
        self.model_pair, self.runtime, self.cuts = model, runtime, cuts
        self.student_tokenizer, self.teacher_tokenizer = tokenizers
        self.extensions = tuple(S.Extensions(t) for t in tokenizers)  # cached over the run
        self.opts, self.ratio, self.teacher_eos = opts, ratio, teacher_eos
        self.prompt_ids = {id(e): self.read_prompt(e) for e in examples}
        self.width = max((len(x) for x in self.prompt_ids.values()), default=1)
        self.last: dict[str, float] = {}
        self.client = None  # a served teacher's (teacher.served.url), else model_pair is local
        self.shared, self.k = None, 0  # objective=simct: the shared vocabulary, its top-k size
        self.span_logit = span_logit  # objective=simct: the span dimension from logits or log-probs
        if shared_topk is not None:
            self.shared = VT.shared_vocabulary(*tokenizers, consistent=shared_tokens == "consistent",
                                               extensions=self.extensions)
            self.k = min(shared_topk or len(self.shared[0]), len(self.shared[0]))

    @classmethod
    def check(cls, exp):
        check_run(exp)

    @classmethod
    def refusals(cls, spec):
        why = ("a teacher with its own tokenizer only scores the student's samples (it cannot "
               "{what}); use teacher.kind='model' with a teacher of the student's tokenizer")
        return {"rollout": why.format(what="write completions in the student's tokens"),
                "mix": why.format(what="join the student's sampling"),
                "contexts": why.format(what="score other contexts"),
                "hidden": why.format(what="match hidden states")}

    @classmethod
    def from_spec(cls, spec, student: Student, mesh, runtime: Runtime):
        from opd_jax.models.tokenizer import tokenizer_of
        text = runtime.text
        if text is None:
            raise ValueError("teacher.kind='cross_tokenizer' needs the run's text set-up "
                             "(Runtime.text): build it through the Trainer")
        s_tok = student.tokenizer or text.tokenizer or tokenizer_of(student.path)
        t_tok = tokenizer_of(spec.model.path)
        for who, tok, where in (("student", s_tok, student.path or "data.tokenizer"),
                                ("teacher", t_tok, spec.model.path)):
            if tok is None:
                raise ValueError(f"teacher.kind='cross_tokenizer' needs the {who}'s tokenizer; "
                                 f"{where} has none")
        if t_tok.eos_token_id is None:
            raise ValueError(f"the teacher's tokenizer ({spec.model.path}) has no EOS token to end "
                             "the completions it reads with")
        d = text.exp.data
        opts = D.TextOptions.of(d, s_tok, t_tok)
        virtual = spec.shared_topk if isinstance(text.exp.objective, O.SimCTConfig) else None
        out = cls(None, (s_tok, t_tok), opts, text.examples, runtime, ratio=spec.token_ratio,
                  teacher_eos=int(t_tok.eos_token_id), cuts=spec.span_cuts,
                  shared_topk=virtual, shared_tokens=spec.shared_tokens,
                  span_logit=getattr(text.exp.objective, "span_logit", "logit"))  # records read first
        if spec.served.url:  # the model is served; its tokenizer is teacher.model.path's
            vocab = served_vocab(spec.model.path, t_tok)
            out.client = ServedTeacher.connect(spec.served, vocab, runtime, t_tok, who="teacher")
            positions = out.client.max_len
        else:
            graphdef, params, _ = build_model(spec.model, mesh)
            out.model_pair = (graphdef, params)
            positions = model_config(graphdef, params).max_position_embeddings
        need = out.width + out.slots(runtime.sampler.max_new_tokens)
        if positions is not None and need > positions:
            raise ValueError(f"the teacher's prompts (up to {out.width} of its tokens) plus "
                             f"{out.slots(runtime.sampler.max_new_tokens)} completion slots "
                             f"(teacher.token_ratio={spec.token_ratio} x sampler.max_new_tokens) "
                             f"exceed its {positions} positions; lower data.max_prompt_len, "
                             "sampler.max_new_tokens or teacher.token_ratio")
        return out

    def read_prompt(self, example) -> tuple[int, ...]:
        where = f"record at line {example.line}"
        return D.teacher_context_ids(prompt_record(example.record, where), self.opts, where)

    def slots(self, n: int) -> int:
        """The teacher's completion width for a student width ``n``."""
        return max(1, math.ceil(self.ratio * n))

    def models(self, student_params):
        return [] if self.client is not None else [self.model_pair]

    def align_rows(self, comp, mask, n: int):
        """Per local row: the teacher's completion, both sides' span indices (``-1``: none), and
        the statistics of :func:`score`."""
        nt, eos_ids = self.slots(n), set(self.runtime.sampler.eos_ids)
        t_ids = np.full((len(comp), nt), self.runtime.sampler.pad_id, np.int32)
        t_span = np.full((len(comp), nt), -1, np.int64)
        s_span = np.full((len(comp), n), -1, np.int64)
        cut = inexact = 0
        sizes = []
        where = [np.flatnonzero(m) for m in mask]
        ids = [c[w] for c, w in zip(comp, where)]
        aligned = S.align_many(self.student_tokenizer, self.teacher_tokenizer, ids,
                               [len(x) > 0 and int(x[-1]) in eos_ids for x in ids], self.teacher_eos,
                               cuts=self.cuts, extensions=self.extensions)
        for r, a in enumerate(aligned):
            if not len(ids[r]):
                continue
            inexact += not a["exact"]
            ts, ss = np.asarray(a["teacher_span"]), np.asarray(a["student_span"])
            if len(ts) > nt:  # spans reaching past the teacher's width are dropped
                cut += 1
                first_lost = ts[nt]
                ts, ss = np.where(ts[:nt] < first_lost, ts[:nt], -1), np.where(ss < first_lost, ss, -1)
            t_ids[r, :len(ts)], t_span[r, :len(ts)] = np.asarray(a["teacher_ids"])[:len(ts)], ts
            s_span[r, where[r]] = ss
            sizes += np.bincount(ss[ss >= 0]).tolist()
        sizes = np.asarray(sizes or [1.0])
        stats = {"xtok/tokens_per_span": float(np.mean(sizes)),
                 "xtok/one_token_spans": float(np.sum(sizes == 1) / np.sum(sizes)),
                 "xtok/cut": cut / max(len(comp), 1), "xtok/inexact": inexact / max(len(comp), 1)}
        return t_ids, t_span, s_span, stats

    def score(self, batch, prompts, student_params):
        rows, n = self.runtime.rows, batch.completion_len
        comp, mask = rows.to_local(batch.targets), rows.to_local(batch.loss_mask)
        t_ids, t_span, s_span, self.last = self.align_rows(comp, mask, n)
        per = len(comp) // len(prompts.examples)
        own = [self.prompt_ids.get(id(e)) or self.read_prompt(e) for e in prompts.examples]
        p, pm = D.left_pad([x for x in own for _ in range(per)], max(self.width, *map(len, own)),
                           self.runtime.sampler.pad_id)
        g = rows.to_global
        t_mask = t_span >= 0
        if self.client is not None:
            logp, extras = self.served_logp(p, pm, t_ids, t_mask), {}
        else:
            logp, extras = self.local_scores(batch, p, pm, t_ids, t_span, s_span, comp)
        mapped = S.spread(logp, t_span, s_span, rows.to_local(batch.behavior_logp))
        extras = {k: g(v) for k, v in {**extras, "teacher_logp": mapped}.items()}
        return batch.replace(extras={**batch.extras, **extras}, loss_mask=batch.loss_mask & g(s_span >= 0))

    def local_scores(self, batch, prompts, prompt_mask, t_ids, t_span, s_span, comp):
        """The local teacher's log-prob of each of its tokens ``[R, Nt]`` and, for objective=simct,
        the virtual vocabulary's inputs (local rows)."""
        rows, g = self.runtime.rows, self.runtime.rows.to_global
        t_mask = t_span >= 0
        graphdef, params = self.model_pair
        seq, temperature = join(g(prompts), g(prompt_mask), g(t_ids), g(t_mask)), self.runtime.temperature
        if self.shared is None:
            return rows.to_local(sequence_logp(graphdef, params, seq, g(t_ids), g(t_mask), batch.group,
                                               temperature, self.runtime.chunk_size)), {}
        scores = VT.teacher_scores(graphdef, params, seq, g(t_ids), batch.group, temperature,
                                   self.runtime.chunk_size or 256, self.shared[1], self.k)
        logp, lse, top, where = (rows.to_local(x) for x in scores)
        ids, top_logp, extras = VT.virtual_extras(logp, top, where, t_span, s_span, t_ids, comp, self.shared,
                                                  lse if self.span_logit == "logit" else None)
        return logp, {"teacher_topk_ids": ids, "teacher_topk_logp": top_logp, **extras}

    def served_logp(self, prompts, prompt_mask, t_ids, t_mask) -> np.ndarray:
        """The served teacher's log-prob of each of its completion tokens, ``[R, Nt]`` (local rows)."""
        tokens = np.concatenate([prompts, t_ids], axis=1)
        mask = np.concatenate([prompt_mask, t_mask], axis=1).astype(bool)
        scores = self.client.score_rows(tokens, mask, t_mask.sum(axis=1))
        out = np.zeros(t_ids.shape, np.float32)
        for r, sc in scores.items():
            out[r, :len(sc.logp)] = sc.logp
        return out

    def metrics(self):
        return {**self.last, **(self.client.metrics() if self.client is not None else {})}

    def close(self):
        if self.client is not None:
            self.client.close()
