"""A teacher served by an inference engine (``teacher.kind="served"``): it never sits in the
trainer's memory.

Each row's prompt plus the student's completion is sent as token ids; the server answers with
the log-prob of every completion token and its ``top_k`` most likely alternatives, which reach
the objectives as a sparse teacher (every recipe that can run on top-k log-probs does; the others
are refused when the run is built). Rows are batched ``rows_per_request`` to a request, at most
``max_in_flight`` requests are open at once, each with a timeout; a failed request is retried
with exponential backoff, then the iteration stops with an error before any update or save (a
resumed run scores the same batch again). In a multi-host run every host scores its own rows and
the hosts agree on success before anyone updates.

Servers that speak the protocol (see :mod:`opd_jax.teachers.wire`), for the same client:

    # vLLM (teacher.served.api=openai, the default; --max-logprobs >= teacher.served.top_k)
    vllm serve Qwen/Qwen3-8B --port 8000 --max-logprobs 20
    # SGLang (teacher.served.api=sglang)
    python -m sglang.launch_server --model-path Qwen/Qwen3-8B --port 8000
    # our JAX server, on its own host or TPU slice (either api)
    python -m opd_jax.serve --model /path/to/teacher --port 8000

then ``--set teacher.kind=served --set teacher.served.url=http://HOST:8000``. Engines return
log-probs at temperature 1, so the objective's temperature must be 1. At start-up the client
checks that the server answers, which model it serves, and that the server's tokenizer encodes a
probe string as the student's does.
"""

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
from jax.experimental import multihost_utils

from opd_jax.teachers import wire
from opd_jax.teachers.base import Runtime, Student, Teacher
from opd_jax.training.errors import TrainingError

PROBE = "Distil 12 tokens, then 3.5 more: naïve café, ∑ x² ≤ 10 → done!"
_REFUSED = "a served teacher only scores tokens (it cannot {what} here); {fix}"


class TeacherServerError(TrainingError):
    """The teacher server did not answer, or answered something unusable."""


class _Retryable(Exception):
    pass


def _json(url: str, body: dict | None, timeout: float) -> tuple[object, int, int]:
    """``(decoded answer, bytes sent, bytes received)`` of a GET (``body`` None) or POST."""
    data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode(errors="replace")
        if e.code >= 500 or e.code == 429:
            raise _Retryable(f"HTTP {e.code}: {detail}") from e
        raise TeacherServerError(f"{url} refused the request (HTTP {e.code}): {detail}") from e
    except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
        reason = getattr(e, "reason", e)
        if "timed out" in str(reason):
            reason = f"no answer within teacher.served.timeout_s={timeout} s"
        raise _Retryable(str(reason)) from e
    try:
        return json.loads(raw), len(data or b""), len(raw)
    except ValueError as e:
        raise wire.MalformedResponse(f"the answer is not JSON ({e}): {raw[:120]!r}") from e


class ServedTeacher(Teacher):
    """The client of a teacher server (see the module docstring)."""
    sparse = True

    @classmethod
    def check(cls, exp):
        from opd_jax.training.checks import check_sparse_teacher
        check_sparse_teacher(exp, exp.teacher.served.top_k)

    def __init__(self, spec, model: str, vocab: int, max_len: int | None, runtime: Runtime):
        self.spec, self.model, self.vocab, self.max_len = spec, model, vocab, max_len
        self.runtime = runtime
        self.url = spec.url.rstrip("/")
        self.overlap = spec.overlap
        self._counts: dict[str, float] = {}  # of the last scored batch
        self._background: ThreadPoolExecutor | None = None  # runs the requests of start_score

    @classmethod
    def refusals(cls, spec):
        return {"rollout": _REFUSED.format(what="sample cold-start or sequence-KD rollouts",
                                           fix="set loop.cold_start_steps=0 and loop.seq_kd=false"),
                "mix": _REFUSED.format(what="draw tokens for teacher-mixed sampling",
                                       fix="set loop.teacher_mix=0"),
                "contexts": _REFUSED.format(what="score UniSD's auxiliary or bad contexts",
                                            fix="turn objective.agreement and "
                                                "objective.contrastive_coef off"),
                "hidden": _REFUSED.format(what="send hidden states",
                                          fix="set objective.hidden_coef=0")}

    @classmethod
    def from_spec(cls, spec, student: Student, mesh, runtime: Runtime):
        from opd_jax.training.build import vocab_size
        tok = student.tokenizer
        if tok is None and student.path:
            from opd_jax.models import load_tokenizer
            from opd_jax.models.hf_io import has_tokenizer
            tok = load_tokenizer(student.path) if has_tokenizer(student.path) else None
        return cls.connect(spec.served, vocab_size(student.graphdef, student.params), runtime, tok)

    @classmethod
    def connect(cls, served, vocab: int, runtime: Runtime, tokenizer, *, who: str = "student"):
        """The client of the server at ``served.url``: it answers, serves the named model, and its
        tokenizer encodes :data:`PROBE` as ``tokenizer`` does (``who``: whose tokenizer that is,
        for the error; no check when ``tokenizer`` is None, like a random-init model's).
        ``vocab``: the size of the vocabulary the answers' token ids must fall in."""
        url = served.url.rstrip("/")
        try:
            listing, _, _ = _json(url + "/v1/models", None, served.timeout_s)
        except (_Retryable, TeacherServerError) as e:
            raise TeacherServerError(
                f"the teacher server at {url} does not answer ({e}). Start it first, e.g. "
                "`python -m opd_jax.serve --model PATH --port PORT`, `vllm serve MODEL` or "
                "SGLang's launch_server (see opd_jax.teachers.served), and check "
                "teacher.served.url.") from None
        models = {m.get("id"): m for m in (listing.get("data") or []) if isinstance(m, dict)} \
            if isinstance(listing, dict) else {}
        name = served.model or (next(iter(models)) if len(models) == 1 else None)
        if name not in models:
            raise TeacherServerError(f"the teacher server at {url} serves {sorted(models)}; name "
                                     "one with teacher.served.model.")
        max_len = models[name].get("max_model_len")
        teacher = cls(served, name, vocab, max_len if isinstance(max_len, int) else None, runtime)
        if tokenizer is not None:
            teacher.check_tokenizer(tokenizer, who)
        return teacher

    def check_tokenizer(self, tok, who: str = "student") -> None:
        """The server's tokenizer encodes :data:`PROBE` as ``tok`` (the ``who``'s) does."""
        want = list(tok(PROBE, add_special_tokens=False)["input_ids"])
        body = {"model": self.model, "prompt": PROBE, "add_special_tokens": False}
        answers = []
        for path in ("/tokenize", "/v1/tokenize"):  # vLLM, SGLang
            try:
                answers.append(_json(self.url + path, body, self.spec.timeout_s)[0])
                break
            except (_Retryable, TeacherServerError) as e:
                answers.append(e)
        got = answers[-1].get("tokens") if isinstance(answers[-1], dict) else None
        if not isinstance(got, list):
            raise TeacherServerError(f"cannot compare the teacher server's tokenizer with the "
                                     f"{who}'s: {self.url}/tokenize answered {answers[-1]}")
        if got != want:
            i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got),
                                                                                   len(want)))
            fix = ("on-policy distillation with teacher.kind='served' needs one tokenizer (a teacher "
                   "with its own: teacher.kind='cross_tokenizer' with teacher.served.url, and "
                   "teacher.model.path naming its tokenizer)") if who == "student" else (
                "teacher.model.path must name the served model's tokenizer")
            raise TeacherServerError(
                f"the teacher server's tokenizer differs from the {who}'s: {PROBE!r} encodes "
                f"to ids {got[:i + 1]}... on the server, {want[:i + 1]}... for the {who} (first "
                f"difference at token {i}); {fix}.")

    def position_limits(self, student_params):
        return [] if self.max_len is None else [("teacher server", self.max_len)]

    # ------------------------------------------------------------------ scoring

    def _post(self, body: dict, counts: "_Counts") -> tuple[object, int, int]:
        """One request, retried with exponential backoff on errors worth retrying."""
        wait, attempts = self.spec.backoff_s, self.spec.retries + 1
        for attempt in range(attempts):
            try:
                return _json(self.url + wire.ENDPOINTS[self.spec.api], body, self.spec.timeout_s)
            except _Retryable as e:
                if attempt + 1 == attempts:
                    raise TeacherServerError(
                        f"the teacher server at {self.url} failed {attempts} times; last: {e}. "
                        "Nothing was updated or saved by this step: restart the server (or raise "
                        "teacher.served.timeout_s / retries) and run again to resume.") from None
                counts.add(retries=1)
                time.sleep(wait)
                wait *= 2

    def _exchange(self, body: dict, parse, counts: "_Counts"):
        """``parse(answer)`` of one request, counted; a malformed answer stops the step."""
        try:
            answer, sent, received = self._post(body, counts)
            counts.add(bytes_sent=sent, bytes_received=received, requests=1)
            return parse(answer)
        except wire.MalformedResponse as e:
            raise TeacherServerError(f"the teacher server at {self.url} sent a malformed answer: "
                                     f"{e}") from None

    def _request(self, sequences, starts, counts: "_Counts") -> list[wire.Scores]:
        api = self.spec.api
        return self._exchange(wire.request(api, self.model, sequences, self.spec.top_k),
                              lambda a: wire.parse(api, a, sequences, starts, self.spec.top_k,
                                                   self.vocab), counts)

    def _batched(self, items: list, ask) -> list:
        """``ask(group)`` (one answer per item of ``group``) over consecutive groups of
        ``teacher.served.rows_per_request`` items, at most ``max_in_flight`` requests open at
        once: every item's answer, in order."""
        size = self.spec.rows_per_request
        groups = [items[i:i + size] for i in range(0, len(items), size)]
        with ThreadPoolExecutor(max_workers=self.spec.max_in_flight) as pool:
            return [answer for answers in pool.map(ask, groups) for answer in answers]

    def next_logp(self, sequences: list[list[int]]):
        """The log-prob of the most likely next token after each of this host's ``sequences``
        (token ids): ``(float32 [len(sequences)], counters, error)``; the counters are what the
        requests cost (as :meth:`metrics` names them), ``error`` the failure that stopped them
        (None if none). Safe in a background thread; every host then calls :meth:`agree` with its
        ``error`` together."""
        api, counts = self.spec.api, _Counts()
        error, out = None, np.zeros(len(sequences), np.float32)
        try:
            out = np.array(self._batched(sequences, lambda g: self._exchange(
                wire.next_request(api, self.model, g), lambda a: wire.parse_next(api, a, len(g)),
                counts)), np.float32).reshape(len(sequences))
        except TrainingError as e:
            error = e
        counts.add(tokens=float(sum(len(s) for s in sequences)))
        return out, dict(counts.values), error

    def _fetch(self, tokens, mask, lengths, counts: "_Counts") -> dict[int, wire.Scores]:
        """Scores of the completion (the last ``lengths[r]`` real tokens) of every row."""
        t0 = time.perf_counter()
        rows = [r for r in range(len(tokens)) if lengths[r] > 0]
        seqs = [tokens[r][mask[r]].tolist() for r in rows]
        asked = [(s, len(s) - int(lengths[r])) for s, r in zip(seqs, rows)]  # (sequence, start)
        try:
            return dict(zip(rows, self._batched(asked, lambda g: self._request(
                [s for s, _ in g], [start for _, start in g], counts))))
        finally:
            counts.add(tokens=float(sum(lengths)))
            counts.values["time/teacher_requests"] = time.perf_counter() - t0

    def start_score(self, batch, prompts, student_params):
        """Send ``batch``'s rows to the server in the background; the returned function waits
        for the answers and gives the scored batch."""
        to_local = self.runtime.rows.to_local
        seq = batch.teacher_sequences
        tokens, mask = to_local(seq.tokens), to_local(seq.mask)
        lengths = mask[:, -batch.completion_len:].sum(axis=1)  # the completion's real tokens
        counts = _Counts()
        if self._background is None:
            self._background = ThreadPoolExecutor(max_workers=1)
        future = self._background.submit(self._fetch, tokens, mask, lengths, counts)

        def finish():
            error, scores = None, {}
            try:
                scores = future.result()
            except TrainingError as e:
                error = e
            self.agree(error)
            self._counts = dict(counts.values)
            return self._scored(batch, scores, len(tokens))
        return finish

    def score(self, batch, prompts, student_params):
        return self.start_score(batch, prompts, student_params)()

    def score_rows(self, tokens: np.ndarray, mask: np.ndarray, lengths: np.ndarray) -> dict[int, wire.Scores]:
        """This host's rows of token ids ``[R, L]`` (``mask`` marks the real ones), each scored on
        its last ``lengths[r]`` real tokens: ``{row: Scores}`` for the rows with a completion.
        Every host calls it together (a failure anywhere stops all); :meth:`metrics` then holds
        what it cost."""
        counts, error, scores = _Counts(), None, {}
        try:
            scores = self._fetch(tokens, mask, lengths, counts)
        except TrainingError as e:
            error = e
        self.agree(error)
        self._counts = dict(counts.values)
        return scores

    def _scored(self, batch, scores: dict[int, wire.Scores], b: int):
        """``batch`` with the sparse teacher's extras for this host's ``b`` rows (a finite filler
        where nothing was scored)."""
        n, k = batch.completion_len, self.spec.top_k
        uniform = -np.log(np.float32(self.vocab))
        ids = np.broadcast_to(np.arange(k, dtype=np.int32), (b, n, k)).copy()
        top, logp = np.full((b, n, k), uniform, np.float32), np.full((b, n), uniform, np.float32)
        for r, s in scores.items():
            m = len(s.logp)
            ids[r, :m], top[r, :m], logp[r, :m] = s.topk_ids, s.topk_logp, s.logp
        g = self.runtime.rows.to_global
        return batch.replace(extras={**batch.extras, "teacher_topk_ids": g(ids),
                                     "teacher_topk_logp": g(top), "teacher_logp": g(logp)})

    @staticmethod
    def agree(error: Exception | None) -> None:
        """Every host learns whether every host's rows were scored; all stop if one failed."""
        failed = error is not None
        if jax.process_count() > 1:
            flags = multihost_utils.process_allgather(np.int32(failed))
            if np.any(flags) and not failed:
                raise TeacherServerError("another host's teacher requests failed (see its log); "
                                         "nothing was updated or saved by this step.")
        if failed:
            raise error

    def metrics(self):
        return dict(self._counts)

    def close(self):
        if self._background is not None:
            self._background.shutdown(wait=False, cancel_futures=True)
            self._background = None


class _Counts:
    """What scoring one batch cost on the wire (requests run in threads, hence the lock)."""

    def __init__(self):
        self.values = dict.fromkeys(("teacher/bytes_sent", "teacher/bytes_received",
                                     "teacher/requests", "teacher/retries", "teacher/tokens"), 0.0)
        self.lock = threading.Lock()

    def add(self, **amounts: float) -> None:
        with self.lock:
            for name, x in amounts.items():
                self.values[f"teacher/{name}"] += x
