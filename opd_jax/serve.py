"""Serve a teacher for on-policy distillation from its own host or accelerators.

    python -m opd_jax.serve --model PATH [--port 8000] [--host 127.0.0.1] [--name NAME]

``PATH`` is a Hugging Face checkpoint directory (or a repo id in the local HF cache). The server
answers the requests of a served teacher (``teacher.kind="served"``, see
:mod:`opd_jax.teachers.served`) in both protocols of :mod:`opd_jax.teachers.wire`, as vLLM and
SGLang do:

- ``GET /v1/models``, ``GET /health``;
- ``POST /v1/completions`` with token-id prompts and ``prompt_logprobs`` (vLLM's extension), or
  with ``max_tokens: 1`` and ``logprobs: 1`` (a look-ahead: the most likely next token after each
  prompt and its log-prob; this server generates nothing else, and that one token greedily);
- ``POST /generate`` with ``input_ids``, ``return_logprob``, ``logprob_start_len: 0``,
  ``top_logprobs_num`` and ``max_new_tokens: 0`` (SGLang's native API), or ``max_new_tokens: 1``
  with ``top_logprobs_num: 1`` (the look-ahead);
- ``POST /tokenize`` (and ``/v1/tokenize``) when the checkpoint has a tokenizer.

Log-probs are at temperature 1 over the full vocabulary, in float32. Rows are sharded over the
devices of a ``data x fsdp x tensor`` mesh (``--fsdp``, ``--tensor`` split the weights of a
large teacher). Once ready the server prints ``serving <name> on http://<host>:<port>``.
"""

import argparse
import json
import sys
import threading
import time
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_ROWS = 64  # rows per forward pass (a request with more runs in several)


class BadRequest(ValueError):
    pass


def _pow2(n: int, low: int) -> int:
    return max(low, 1 << max(n - 1, 0).bit_length())


class Scorer:
    """Every position's log-probs under a model: the given token's, its rank, and the top-k."""

    def __init__(self, graphdef, params, mesh, *, max_top_k: int, chunk: int = 128):
        import jax
        from jax.sharding import NamedSharding, PartitionSpec as P

        from opd_jax.sampling.sampler import model_config
        self.graphdef, self.params, self.mesh = graphdef, params, mesh
        cfg = model_config(graphdef, params)
        self.vocab, self.max_len = cfg.vocab_size, cfg.max_position_embeddings
        self.max_top_k, self.chunk = min(max_top_k, self.vocab), chunk
        self.rows = NamedSharding(mesh, P(("data", "fsdp")))
        self.data = mesh.shape["data"] * mesh.shape["fsdp"]
        self.lock = threading.Lock()
        self.fn = jax.jit(partial(_score, graphdef), static_argnums=(3, 4))

    def check(self, sequences, top_k) -> list[list[int]]:
        if (not isinstance(top_k, int) or isinstance(top_k, bool)
                or not 0 <= top_k <= self.max_top_k):
            raise BadRequest(f"the number of log-probs per position must be an int in [0, "
                             f"{self.max_top_k}] (--max-top-k), got {top_k!r}")
        if isinstance(sequences, list) and sequences and all(isinstance(t, int) for t in sequences):
            sequences = [sequences]
        if not isinstance(sequences, list) or not sequences:
            raise BadRequest("give the prompts as token ids: a list of ints or a list of them "
                             "(this server takes no text)")
        for i, s in enumerate(sequences):
            if (not isinstance(s, list) or not s or not all(
                    isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self.vocab
                    for t in s)):
                raise BadRequest(f"prompt {i} must be a non-empty list of token ids in [0, "
                                 f"{self.vocab})")
            if len(s) > self.max_len:
                raise BadRequest(f"prompt {i} has {len(s)} tokens, more than the model's "
                                 f"{self.max_len} positions")
        return sequences

    def __call__(self, sequences: list[list[int]], top_k: int):
        """Per sequence of length L: ``(token_logp [L-1], token_rank [L-1], topk_ids [L-1, K],
        topk_logp [L-1, K])`` for the tokens ``1..L-1``."""
        out = []
        for i in range(0, len(sequences), MAX_ROWS):
            out += self._batch(sequences[i:i + MAX_ROWS], top_k)
        return out

    def next_top(self, sequences: list[list[int]]) -> list[tuple[int, float]]:
        """The most likely next token after each sequence and its log-prob."""
        for i, s in enumerate(sequences):
            if len(s) >= self.max_len:
                raise BadRequest(f"prompt {i} has {len(s)} tokens: no position is left after it "
                                 f"in the model's {self.max_len}")
        scores = self([s + [0] for s in sequences], 1)  # the appended token's position: what follows s
        return [(int(ids[-1, 0]), float(top[-1, 0])) for _, _, ids, top in scores]

    def _batch(self, sequences, top_k):
        import jax
        import numpy as np
        longest = max(len(s) for s in sequences)
        width = min(_pow2(longest, 16), max(self.max_len, longest))  # few compiled shapes
        rows = self.data * _pow2(-(-len(sequences) // self.data), 1)
        tokens = np.zeros((rows, width), np.int32)
        mask = np.zeros((rows, width), bool)
        for r, s in enumerate(sequences):
            tokens[r, :len(s)], mask[r, :len(s)] = s, True
        k = max(top_k, 1)
        with self.lock, jax.set_mesh(self.mesh):
            res = self.fn(self.params, jax.device_put(tokens, self.rows),
                          jax.device_put(mask, self.rows), k, min(self.chunk, width - 1))
            tok, rank, ids, top = (np.asarray(x) for x in jax.device_get(res))
        return [(tok[r, :len(s) - 1], rank[r, :len(s) - 1], ids[r, :len(s) - 1, :top_k],
                 top[r, :len(s) - 1, :top_k]) for r, s in enumerate(sequences)]


def _score(graphdef, params, tokens, mask, k: int, chunk: int):
    """Right-padded ``tokens [B, T]`` → the log-prob and rank of each next token and the top-k of
    each position, ``[B, T-1]`` and ``[B, T-1, k]``; the vocabulary runs ``chunk`` positions at a
    time, so no ``[B, T, V]`` array exists."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    model = nnx.merge(graphdef, params)
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    h, _ = model.hidden(tokens, positions, mask=mask)
    head = model.lm_head_weight()
    n = -(-(t - 1) // chunk)
    pad = n * chunk - (t - 1)
    h = jnp.pad(h[:, :-1], ((0, 0), (0, pad), (0, 0)))
    nxt = jnp.pad(tokens[:, 1:], ((0, 0), (0, pad)))
    blocks = lambda x: jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)  # noqa: E731

    def block(xs):
        hb, tb = xs
        logits = jnp.einsum("bcd,dv->bcv", hb, head, preferred_element_type=jnp.float32)
        lp = jax.nn.log_softmax(logits, axis=-1)
        tok = jnp.take_along_axis(lp, tb[..., None], axis=-1)[..., 0]
        rank = 1 + jnp.sum(lp > tok[..., None], axis=-1, dtype=jnp.int32)
        top, ids = jax.lax.top_k(lp, k)
        return tok, rank, ids.astype(jnp.int32), top

    out = jax.lax.map(block, (blocks(h), blocks(nxt)))
    return tuple(jnp.moveaxis(x, 0, 1).reshape(b, n * chunk, *x.shape[3:])[:, :t - 1]
                 for x in out)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, scorer: Scorer, name: str, tokenizer=None, verbose=False):
        super().__init__(address, Handler)
        self.scorer, self.name, self.tokenizer, self.verbose = scorer, name, tokenizer, verbose


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)

    def _send(self, status: int, body) -> None:
        raw = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": status.phrase,
                                      "code": int(status)}})

    def do_GET(self):  # noqa: N802 (the http.server convention)
        s = self.server
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": s.name, "object": "model", "owned_by": "opd_jax",
                 "max_model_len": s.scorer.max_len}]})
        elif self.path == "/health":
            self._send(200, {})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route GET {self.path}")

    def do_POST(self):  # noqa: N802
        routes = {"/v1/completions": self._completions, "/generate": self._generate,
                  "/tokenize": self._tokenize, "/v1/tokenize": self._tokenize}
        if self.path not in routes:
            return self._error(HTTPStatus.NOT_FOUND, f"no route POST {self.path}")
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            self._send(200, routes[self.path](body))
        except (BadRequest, ValueError) as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        except LookupError as e:
            self._error(HTTPStatus.NOT_FOUND, str(e))

    def _model(self, body):
        if body.get("model") not in (None, self.server.name):
            raise BadRequest(f"this server serves {self.server.name!r}, not {body['model']!r}")

    def _completions(self, body) -> dict:
        from opd_jax.teachers import wire
        self._model(body)
        if body.get("prompt_logprobs") is None and body.get("max_tokens") == 1 and body.get("logprobs"):
            seqs = self.server.scorer.check(body.get("prompt"), 1)
            n = sum(len(s) for s in seqs)
            return {"id": f"cmpl-{time.time_ns()}", "object": "text_completion",
                    "created": int(time.time()), "model": self.server.name,
                    "choices": [wire.openai_next_choice(i, t, lp) for i, (t, lp)
                                in enumerate(self.server.scorer.next_top(seqs))],
                    "usage": {"prompt_tokens": n, "completion_tokens": len(seqs),
                              "total_tokens": n + len(seqs)}}
        if body.get("prompt_logprobs") is None:
            raise BadRequest("this server scores prompts (set prompt_logprobs) or gives the next "
                             "token's log-prob (set max_tokens=1 and logprobs=1)")
        k = body["prompt_logprobs"]
        seqs = self.server.scorer.check(body.get("prompt"), k)
        scores = self.server.scorer(seqs, k)
        n = sum(len(s) for s in seqs)
        return {"id": f"cmpl-{time.time_ns()}", "object": "text_completion",
                "created": int(time.time()), "model": self.server.name,
                "choices": [wire.openai_choice(i, s, tok, rank, ids, top)
                            for i, (s, (tok, rank, ids, top)) in enumerate(zip(seqs, scores))],
                "usage": {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n}}

    def _generate(self, body):
        from opd_jax.teachers import wire
        single = isinstance(body.get("input_ids"), list) and all(
            isinstance(t, int) for t in body["input_ids"])
        new = (body.get("sampling_params") or {}).get("max_new_tokens")
        if new == 1 and body.get("return_logprob"):
            seqs = self.server.scorer.check(body.get("input_ids"), 1)
            items = [wire.sglang_next_item(len(s), t, lp)
                     for s, (t, lp) in zip(seqs, self.server.scorer.next_top(seqs))]
            return items[0] if single else items
        if new != 0:
            raise BadRequest("this server scores inputs (set sampling_params.max_new_tokens=0) or "
                             "gives the next token's log-prob (max_new_tokens=1, return_logprob)")
        if not body.get("return_logprob") or body.get("logprob_start_len") != 0:
            raise BadRequest("set return_logprob=true and logprob_start_len=0")
        seqs = self.server.scorer.check(body.get("input_ids"), body.get("top_logprobs_num", 0))
        items = [wire.sglang_item(s, sc[0], sc[2], sc[3])
                 for s, sc in zip(seqs, self.server.scorer(seqs, body.get("top_logprobs_num", 0)))]
        return items[0] if single else items

    def _tokenize(self, body):
        tok = self.server.tokenizer
        if tok is None:
            raise LookupError("this checkpoint has no tokenizer")
        if not isinstance(body.get("prompt"), str):
            raise BadRequest("prompt must be a string")
        ids = list(tok(body["prompt"], add_special_tokens=bool(body.get("add_special_tokens",
                                                                           True)))["input_ids"])
        return {"tokens": ids, "count": len(ids), "max_model_len": self.server.scorer.max_len}


def build(args) -> Server:
    import dataclasses

    from opd_jax.models.hf_io import has_tokenizer, load_tokenizer
    from opd_jax.sharding import make_mesh
    from opd_jax.training.build import build_model
    from opd_jax.training.config import ModelSpec
    mesh = make_mesh(data=-1, fsdp=args.fsdp, tensor=args.tensor)
    spec = dataclasses.replace(ModelSpec(path=args.model), param_dtype=args.param_dtype,
                               dtype=args.dtype or args.param_dtype)
    graphdef, params, _ = build_model(spec, mesh)
    tok = load_tokenizer(args.model) if has_tokenizer(args.model) else None
    scorer = Scorer(graphdef, params, mesh, max_top_k=args.max_top_k)
    return Server((args.host, args.port), scorer, args.name or args.model, tok, args.verbose)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m opd_jax.serve", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="Hugging Face checkpoint directory or repo id")
    p.add_argument("--name", help="the model's name in requests (default: --model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    p.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="compute dtype (default: --param-dtype)")
    p.add_argument("--fsdp", type=int, default=1, help="mesh axis that splits the weights")
    p.add_argument("--tensor", type=int, default=1, help="tensor-parallel mesh axis")
    p.add_argument("--max-top-k", type=int, default=20,
                   help="most log-probs per position a request may ask for (vLLM: --max-logprobs)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    args = p.parse_args(argv)
    if args.max_top_k < 1:
        p.error(f"--max-top-k must be >= 1, got {args.max_top_k}")
    try:
        server = build(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    print(f"serving {server.name} on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
