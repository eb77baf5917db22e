"""The served teacher against real HTTP servers on the loopback interface.

``python -m opd_jax.serve`` runs in its own process, backed by a tiny local checkpoint; the same
checkpoint as a local teacher is the oracle: the server's top-k log-probs equal the local
teacher's, and a run with the served teacher equals a run with the local one on the recipes that
read only the teacher's top-k and sampled-token log-probs. Failure cases: a server that is down
at start, one that dies mid-run (no update, no save, clean stop; the resumed run ends bitwise
equal to an uninterrupted one), one that is too slow, and malformed answers (the error names the
field). Small in-test HTTP servers play the misbehaving servers.
"""

import dataclasses
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jax
import numpy as np
import pytest
from flax import nnx

import opd_jax.objectives as O
from cli_helpers import (REPO, assert_bitwise_equal, child_env, max_abs_diff, metrics, read_state,
                         reproducible, steps)
from opd_jax.models import Transformer, save_pretrained, tiny_config
from opd_jax.sampling import sample
from opd_jax.sharding import make_mesh
from opd_jax.teachers import Runtime, ServedTeacher, Student, TeacherServerError, wire
from opd_jax.training.batches import Rows, assemble, from_rollout
from opd_jax.training.config import LoopConfig, ModelSpec, ServedSpec, TeacherSpec
from opd_jax.training.loop import Trainer
from test_loop import V, experiment

pytestmark = pytest.mark.slow
TOP_K = 6


def start_server(model_dir, timeout=120.0):
    """``python -m opd_jax.serve`` on a free loopback port; ``(process, url)`` once it serves."""
    proc = subprocess.Popen([sys.executable, "-m", "opd_jax.serve", "--model", str(model_dir),
                             "--port", "0", "--name", "teacher"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=child_env(devices=1))
    lines, t0 = [], time.monotonic()
    while time.monotonic() - t0 < timeout:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("serving "):
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining
            return proc, line.split(" on ")[-1].strip()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("the server did not start:\n" + "".join(lines)[-3000:])


def stop(proc):
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("served") / "teacher"
    save_pretrained(Transformer(tiny_config(vocab_size=V, hidden_size=48, num_layers=2),
                                rngs=nnx.Rngs(1)), path)
    return path


@pytest.fixture(scope="module")
def server(teacher_dir):
    proc, url = start_server(teacher_dir)
    yield url
    stop(proc)


def served(url, **kw):
    kw.setdefault("top_k", TOP_K)
    return TeacherSpec(kind="served", served=ServedSpec(url=url, **kw))


def _exp(tmp_path, teacher, objective=O.OPDConfig(), **kw):
    # lr 1e-3: Adam's first steps move every weight by about lr whatever the gradient's size, so
    # float32 noise in a near-zero gradient moves a weight by up to lr (1e-3 keeps that < 1e-5)
    return experiment(tmp_path, objective, teacher=teacher, lr=1e-3, samples=2,
                      steps=kw.pop("steps", 3), **kw)


def test_served_scores_equal_the_local_teachers_and_both_protocols_agree(tmp_path, teacher_dir,
                                                                          server):
    local = Trainer(_exp(tmp_path, TeacherSpec(kind="model", model=ModelSpec(path=str(
        teacher_dir)))))
    remote = Trainer(_exp(tmp_path, served(server, rows_per_request=3, max_in_flight=2)))
    sglang = Trainer(_exp(tmp_path, served(server, api="sglang", rows_per_request=3)))
    prompts = local.prompts(0)
    g = local.rows.to_global
    with jax.set_mesh(local.mesh):
        roll = sample(local.s_graph, local.state.params, g(prompts.tokens), g(prompts.mask),
                      jax.random.key(3), cfg=local.exp.sampler)
        batch = from_rollout(local.rows, prompts, roll, local.exp.sampler.num_samples)
        dense = local.teacher.score(batch, prompts, None)
        sparse = remote.teacher.score(batch, prompts, None).extras
        other = sglang.teacher.score(batch, prompts, None).extras
    head = nnx.merge(local.teacher.graphdef, local.teacher.params).lm_head_weight()
    lq = np.asarray(jax.nn.log_softmax(np.asarray(dense.teacher_hidden) @ np.asarray(head)),
                    np.float64)
    mask, targets = np.asarray(batch.loss_mask), np.asarray(batch.targets)
    want_top = -np.sort(-lq, axis=-1)[..., :TOP_K]
    want_tok = np.take_along_axis(lq, targets[..., None], -1)[..., 0]
    got_ids = np.asarray(sparse["teacher_topk_ids"])
    got_top = np.asarray(sparse["teacher_topk_logp"])
    np.testing.assert_allclose(got_top[mask], want_top[mask], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sparse["teacher_logp"])[mask], want_tok[mask], rtol=1e-5,
                               atol=1e-5)
    at_ids = np.take_along_axis(lq, got_ids, -1)  # the ids sent are the teacher's top-k
    np.testing.assert_allclose(at_ids[mask], want_top[mask], rtol=1e-5, atol=1e-5)
    for k in sparse:
        np.testing.assert_array_equal(np.asarray(other[k]), np.asarray(sparse[k]), err_msg=k)
    m = remote.teacher.metrics()
    assert m["teacher/requests"] == np.ceil(int(np.sum(mask.any(1))) / 3)
    assert m["teacher/bytes_received"] > m["teacher/bytes_sent"] > 0


@pytest.mark.parametrize("objective", [O.OPDConfig(), O.OPSDConfig(teacher_top_k=4,
                                                                    temperature=1.0)],
                         ids=["opd", "opsd_topk"])
def test_a_run_with_the_served_teacher_equals_one_with_the_local_teacher(tmp_path, teacher_dir,
                                                                         server, objective):
    (tmp_path / "local").mkdir()
    (tmp_path / "served").mkdir()
    local = Trainer(_exp(tmp_path / "local", TeacherSpec(kind="model", model=ModelSpec(
        path=str(teacher_dir))), objective))
    remote = Trainer(_exp(tmp_path / "served", served(server), objective))
    for _ in range(3):
        a, b = local.iteration(), remote.iteration()
        np.testing.assert_allclose(b["loss/total"], a["loss/total"], rtol=1e-5, atol=1e-6)
    assert max_abs_diff(jax.device_get(remote.state.params),
                        jax.device_get(local.state.params)) < 1e-5
    assert b["teacher/requests"] > 0 and b["flops/score"] == 0.0  # scored remotely


def test_a_server_dying_mid_run_stops_before_any_update_and_the_resume_is_bitwise(
        tmp_path, teacher_dir, server):
    def exp(work, url):
        e = _exp(tmp_path, served(url, retries=1, backoff_s=0.05, timeout_s=20), steps=4)
        return dataclasses.replace(e, ckpt=dataclasses.replace(e.ckpt, every=1, keep=9),
                                   run=dataclasses.replace(e.run, workdir=str(work)))
    ref, work = tmp_path / "uninterrupted", tmp_path / "killed"
    Trainer(exp(ref, server)).run()

    proc, url = start_server(teacher_dir)  # a server of its own, to kill

    def kill_after_step_2(trainer, step, metrics):
        if step == 2:
            stop(proc)
    trainer = Trainer(exp(work, url), callbacks=[kill_after_step_2])
    with pytest.raises(TeacherServerError, match=r"failed 2 times.*Nothing was updated or saved"):
        trainer.run()
    assert int(trainer.state.step) == 2  # step 3 was never applied
    assert steps(work) == [1, 2] and [m["step"] for m in metrics(work)] == [1, 2]

    Trainer(exp(work, server)).run()  # another server (URL) resumes: a run-only setting
    assert_bitwise_equal(read_state(work, 4), read_state(ref, 4))
    assert [reproducible(m) for m in metrics(work)] == [reproducible(m) for m in metrics(ref)]


def test_overlap_samples_the_next_batch_from_the_weights_before_the_update(tmp_path, server):
    """With teacher.served.overlap, step 1 trains on a batch sampled from the initial weights
    (it was sent to the server during step 0's update); the oracle builds that step by hand."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    over = Trainer(_exp(tmp_path / "a", served(server, overlap=True)))
    ref = Trainer(_exp(tmp_path / "b", served(server)))
    theta0 = jax.tree.map(lambda x: x.copy(), ref.state.params)
    a, b = over.iteration(), ref.iteration()  # step 0: both from the initial weights
    assert reproducible(a) == reproducible(b)
    assert_bitwise_equal(jax.device_get(over.state), jax.device_get(ref.state))
    prompts = ref.prompts(int(ref.state.cursor))
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(ref.state.key), 1), 2)
    g = ref.rows.to_global
    with jax.set_mesh(ref.mesh):
        roll = sample(ref.s_graph, theta0, g(prompts.tokens), g(prompts.mask), key,
                      cfg=ref.exp.sampler, row_ids=g(prompts.row_ids))
        rolled = from_rollout(ref.rows, prompts, roll, 2, ref.exp.loop.completion_slices)
        batch = ref.teacher.score(rolled, prompts, None)
        want, _ = ref.step_fn(ref.state, batch, None)
    over.iteration()
    assert_bitwise_equal(jax.device_get(over.state.params), jax.device_get(want.params))


# ------------------------------------------------------------------ misbehaving servers


class _Fake(BaseHTTPRequestHandler):
    """Answers /v1/models, /tokenize and scoring requests as the test's ``script`` says."""
    script: dict = {}

    def log_message(self, *args):
        pass

    def _send(self, status, raw: bytes):
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):  # noqa: N802
        self._send(200, json.dumps({"data": [{"id": "teacher", "max_model_len": 128}]}).encode())

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, answer = self.script[self.path](body)
        time.sleep(self.script.get("delay", 0.0))
        self._send(status, answer if isinstance(answer, bytes) else json.dumps(answer).encode())


@pytest.fixture
def fake():
    """A misbehaving server; set ``fake.script`` (path -> body -> (status, answer))."""
    handler = type("Handler", (_Fake,), {"script": {}})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    handler.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield handler
    httpd.shutdown()
    httpd.server_close()


def _student(vocab=V):
    g, p = nnx.split(Transformer(tiny_config(vocab_size=vocab, hidden_size=16, num_layers=1),
                                 rngs=nnx.Rngs(0)), nnx.Param)
    return Student(g, p, None, "")


def _runtime():
    return Runtime(Rows(make_mesh(data=1, devices=jax.devices()[:1])), None, 1.0, 16)


def _client(url, **kw):
    return ServedTeacher.from_spec(served(url, **kw), _student(), None, _runtime())


def _batch(rows):
    """Two rows: prompts [5] and [8], completions [6, 7] and [9, 10]."""
    g = rows.to_global
    p, c = np.array([[5], [8]], np.int32), np.array([[6, 7], [9, 10]], np.int32)
    return assemble(g(p), g(p > 0), g(c), g(c > 0), g(np.zeros(c.shape, np.float32)))


def _valid_answer(body):
    """A well-formed answer: the log-probs of a uniform teacher over V tokens."""
    choices = []
    for i, seq in enumerate(body["prompt"]):
        n, k = len(seq) - 1, body["prompt_logprobs"]
        flat = np.full(n, -np.log(V))
        choices.append(wire.openai_choice(i, seq, flat, np.full(n, k + 1),
                                          np.tile(np.arange(k), (n, 1)), np.tile(flat[:1], (n, k))))
    return {"choices": choices}


def _corrupt(path):
    """An answer whose field at ``path`` (a function of the valid answer) is broken."""
    def answer(body):
        a = _valid_answer(body)
        path(a)
        return 200, a
    return answer


def _first(a):
    return a["choices"][0]["prompt_logprobs"][1]


@pytest.mark.parametrize("answer,named", [
    (lambda body: (200, b"<html>busy</html>"), r"not JSON"),
    (lambda body: (200, {"choices": []}), r"choices: expected a list of 2"),
    (_corrupt(lambda a: a["choices"][1]["prompt_logprobs"].pop()),
     r"choices\[1\]\.prompt_logprobs: expected a list of 3 entries"),
    (_corrupt(lambda a: _first(a).clear()), r"choices\[0\]\.prompt_logprobs\[1\]: no log-prob of"),
    (_corrupt(lambda a: _first(a).update({"999": {"logprob": -1.0}})),
     r"prompt_logprobs\[1\]\['999'\]: token id '999' is outside the student's vocabulary"),
    (_corrupt(lambda a: _first(a)["0"].update(logprob=0.5)),
     r"prompt_logprobs\[1\]\['0'\]\.logprob: expected a log-probability"),
    (_corrupt(lambda a: _first(a)["0"].pop("logprob")), r"\['0'\]: no 'logprob'"),
    (lambda body: (400, {"error": {"message": "prompt_logprobs > max_logprobs"}}),
     r"refused the request \(HTTP 400\).*max_logprobs"),
], ids=["not-json", "choices", "short", "no-own-token", "id", "positive", "no-logprob", "http400"])
def test_a_malformed_answer_is_an_error_naming_the_field(fake, answer, named):
    fake.script = {"/v1/completions": answer}
    teacher = _client(fake.url)
    with pytest.raises(TeacherServerError, match=named):
        teacher.score(_batch(teacher.runtime.rows), None, None)


def test_a_slow_server_times_out_and_stops_the_step_before_the_update(fake, tmp_path):
    fake.script = {"/v1/completions": lambda body: (200, _valid_answer(body)), "delay": 2.0}
    trainer = Trainer(_exp(tmp_path, served(fake.url, timeout_s=0.3, retries=1, backoff_s=0.01)))
    with pytest.raises(TeacherServerError, match=r"no answer within teacher.served.timeout_s=0.3"):
        trainer.iteration()
    assert int(trainer.state.step) == 0


def test_a_server_that_is_down_at_start(tmp_path):
    import socket
    with socket.socket() as s:  # a port nothing listens on any more
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(TeacherServerError, match=rf"at {url} does not answer.*"
                                                 r"python -m opd_jax.serve"):
        Trainer(_exp(tmp_path, served(url, timeout_s=2)))
    assert not (tmp_path / "run").exists()


def test_the_tokenizer_probe_compares_the_servers_tokenizer_with_the_students(fake):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from opd_jax.teachers.served import PROBE
    words = ["<unk>"] + sorted(set(PROBE.split()))
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    want = tok(PROBE, add_special_tokens=False)["input_ids"]
    student = dataclasses.replace(_student(len(words)), tokenizer=tok)
    spec = served(fake.url)
    fake.script = {"/tokenize": lambda body: (200, {"tokens": want})}
    ServedTeacher.from_spec(spec, student, None, _runtime())  # the same: fine
    fake.script = {"/tokenize": lambda body: (200, {"tokens": want[:3] + [0] + want[4:]})}
    with pytest.raises(TeacherServerError, match=r"tokenizer differs .*difference at token 3"):
        ServedTeacher.from_spec(spec, student, None, _runtime())


@pytest.mark.parametrize("sets,named", [
    (dict(loop=LoopConfig(lmbda=1.0, cold_start_steps=2)), "cannot sample cold-start"),
    (dict(loop=LoopConfig(lmbda=1.0, teacher_mix=0.5)), "teacher-mixed sampling"),
    (dict(objective=O.GKDConfig()), r"objective 'gkd' needs full teacher logits"),
    (dict(objective=O.OPSDConfig(teacher_top_k=4)), r"temperature=1.1, but a served teacher"),
    (dict(objective=O.SGTopKConfig(k=8)), r"objective.k=8 exceeds the 6 log-probs"),
], ids=["cold-start", "mix", "dense-recipe", "temperature", "k"])
def test_what_a_served_teacher_cannot_do_is_refused_before_connecting(tmp_path, sets, named):
    objective = sets.pop("objective", O.OPDConfig())
    with pytest.raises(ValueError, match=named):
        Trainer(_exp(tmp_path, served("http://127.0.0.1:9"), objective, **sets))
