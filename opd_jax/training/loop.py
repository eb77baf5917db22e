"""The on-policy loop: sample from the student, score with the teacher, update. The only impure
code of the package (files, clocks, the Python loop); everything it calls is jitted.

One iteration at optimizer step ``s`` (all randomness from the state's key folded with ``s``,
all data from the state's cursor, so a resumed run repeats an uninterrupted one exactly):

1. choose the batch's source: teacher rollouts during the cold start; else fresh student
   samples with probability ``loop.lmbda`` (GKD's λ), otherwise teacher samples (``seq_kd``)
   or the data's reference completions;
2. sample (the student, optionally mixing teacher tokens, or the teacher);
3. score: the teacher's final hidden states at the completion positions, seeing its own
   (possibly privileged) prompt;
4. one jitted train step with the objective (the SFT objective during the cold start);
5. EMA teacher update, metrics, checkpoint.
"""

import dataclasses
import math
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

import opd_jax.objectives as O
from opd_jax import data as D
from opd_jax.config import to_dict, write_json
from opd_jax.sampling import sample
from opd_jax.sampling.sampler import model_config
from opd_jax.training import flops as F
from opd_jax.sharding import make_mesh
from opd_jax.training.batch import Sequences, TrainBatch, completion_hidden
from opd_jax.training.build import build_model, vocab_size
from opd_jax.training.checkpoint import CheckpointNotFound, Checkpointer, abstract
from opd_jax.training.config import Experiment
from opd_jax.training.logging import MetricsWriter, Progress
from opd_jax.training.optim import make_optimizer
from opd_jax.training.step import (combine_teachers, make_train_step, sharded_init_state,
                                   teacher_view)

sg = jax.lax.stop_gradient
# The objectives' extra inputs scored from the records' extra teacher contexts, and their fields.
_CONTEXT_FIELDS = {"aux_teacher_logp": "aux_teacher_prompts_ids",
                   "bad_teacher_logp": "bad_teacher_prompt_ids"}


class TrainingError(RuntimeError):
    pass


def _join(prompts, prompt_mask, completion, completion_mask) -> Sequences:
    """A left-padded prompt followed by the completion."""
    return Sequences.from_left_padded(jnp.concatenate([prompts, completion], 1),
                                      jnp.concatenate([prompt_mask, completion_mask], 1))


def _assemble(prompts, prompt_mask, completion, completion_mask, behavior_logp, t_prompts,
              t_mask):
    """Sequences = left-padded prompt ++ completion, for the student and (own prompt) the teacher."""
    return TrainBatch(student=_join(prompts, prompt_mask, completion, completion_mask),
                      targets=completion, loss_mask=completion_mask, behavior_logp=behavior_logp,
                      teacher=None if t_prompts is None else _join(t_prompts, t_mask, completion,
                                                                   completion_mask))


def _score(graphdef, params, seq: Sequences, n: int):
    return completion_hidden(nnx.merge(graphdef, sg(params)), seq, n)


def _context_logp(graphdef, params, prompts, prompt_mask, targets, mask, temperature, chunk):
    """The teacher's log-prob of each completion token when it sees another context (UniSD's
    auxiliary demonstrations, its "bad teacher"), ``[B, N]``."""
    model = nnx.merge(graphdef, sg(params))
    n = targets.shape[1]
    hidden = completion_hidden(model, _join(prompts, prompt_mask, targets, mask), n)
    feats = {"logp": O.feature(O.token_logp, "logits", "tokens", temperature=temperature)}
    return O.compute_features(feats, tokens=targets, mask=mask, hidden=hidden,
                              head=model.lm_head_weight(), chunk_size=chunk)["logp"]


def _pick_rows(rolls, pick):
    """Row ``r`` of ``rolls[pick[r]]`` for every field of the rollouts (routed teachers)."""
    def one(*xs):
        stacked = jnp.stack(xs)
        return stacked[pick, jnp.arange(stacked.shape[1])]
    return jax.tree.map(one, *rolls)


def _ema(teacher, student, decay):
    return jax.tree.map(lambda t, s: decay * t + (1.0 - decay) * s, teacher, student)


class Trainer:
    """Builds everything an experiment needs, then ``run()``s it (resuming when possible)."""

    def __init__(self, exp: Experiment, *, examples: list[D.Example] | None = None, tokenizer=None,
                 reward_fn: Callable[[D.Example, np.ndarray], float] | None = None, mesh=None):
        self.exp = exp
        self.mesh = mesh if mesh is not None else make_mesh(**dataclasses.asdict(exp.mesh))
        self.reward_fn = reward_fn
        self._check_static(exp)
        self.s_graph, params, self.p_sh = build_model(exp.student, self.mesh)
        self._build_teacher(params)
        self.examples = examples if examples is not None else D.load_examples(
            exp.data.path, tokenizer=tokenizer, max_prompt_len=exp.data.max_prompt_len,
            vocab_size=vocab_size(self.s_graph, params), chat_template=exp.data.chat_template)
        self._check_lengths(params)
        self._check_routes()
        self._check_inputs()
        self.objective = O.build_objective(exp.objective, diagnostics_k=exp.run.diagnostics_k or None)
        self.sft = O.build_objective(O.SFTConfig(temperature=exp.objective.temperature))
        self.tx = make_optimizer(exp.optim, exp.run.steps)
        with jax.set_mesh(self.mesh):
            self.state, self.state_sh = sharded_init_state(params, self.tx, self.objective,
                                                           exp.run.seed, self.mesh, self.p_sh)
        t_graph = self.s_graph if self.t_graph is None else self.t_graph
        common = dict(graphdef=self.s_graph, teacher_graphdef=t_graph, tx=self.tx, cfg=exp.step)
        self.step_fn = make_train_step(objective=self.objective, **common)
        self.sft_fn = make_train_step(objective=self.sft, **common)
        self.score_fn = jax.jit(_score, static_argnums=(0, 3))
        self.combine_fn = jax.jit(combine_teachers)
        self.pick_fn = jax.jit(_pick_rows)
        self.context_logp_fn = jax.jit(_context_logp, static_argnums=(0, 6, 7))
        self.ema_fn = jax.jit(_ema, donate_argnums=(0,))
        self.rows = NamedSharding(self.mesh, P(("data", "fsdp")))
        self.ckpt = Checkpointer(os.path.join(exp.run.workdir, "checkpoints"),
                                 keep=exp.ckpt.keep, async_save=exp.ckpt.async_save)

    # ------------------------------------------------------------------ set-up checks

    def _check_static(self, exp: Experiment):
        rows = exp.data.batch_size * exp.sampler.num_samples
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if exp.data.batch_size % shards:  # prompts are sharded before num_samples repeats them
            m = self.mesh.shape
            raise ValueError(f"data.batch_size={exp.data.batch_size} prompts do not divide over "
                             f"the {shards} data-parallel devices (mesh data={m['data']} x "
                             f"fsdp={m['fsdp']}); change the batch size or the mesh.")
        if rows % exp.step.grad_accum or (rows // exp.step.grad_accum) % shards:
            raise ValueError(f"{rows} rows cannot be split into step.grad_accum={exp.step.grad_accum} "
                             f"micro-batches that each divide over {shards} devices.")
        if exp.data.batch_size % jax.process_count():
            raise ValueError(f"data.batch_size={exp.data.batch_size} must divide over "
                             f"{jax.process_count()} hosts.")
        if exp.teacher.kind == "models":
            if exp.loop.teacher_mix > 0:
                raise ValueError("loop.teacher_mix samples tokens from one teacher; it is not "
                                 "supported with several teachers (teacher.kind='models').")
            rolls = exp.loop.cold_start_steps > 0 or (exp.loop.seq_kd and exp.loop.lmbda < 1)
            if rolls and exp.teacher.combine != "route":
                raise ValueError("teacher rollouts (loop.cold_start_steps, loop.seq_kd) with "
                                 "several teachers need teacher.combine='route': a mix of "
                                 "teachers is not one model to sample from.")
            if getattr(exp.objective, "hidden_coef", 0.0):
                raise ValueError("hidden-state matching (objective.hidden_coef) needs one teacher "
                                 "with the student's hidden size, not teacher.kind='models'.")

    def _build_teacher(self, params):
        kind = self.exp.teacher.kind
        self.t_graph, self.t_params, self.t_sh = None, None, self.p_sh
        if kind == "model":
            self.t_graph, self.t_params, self.t_sh = build_model(self.exp.teacher.model, self.mesh)
            vs, vt = vocab_size(self.s_graph, params), vocab_size(self.t_graph, self.t_params)
            if vs != vt:
                raise ValueError(f"teacher and student vocabularies differ (student {vs}, teacher "
                                 f"{vt}); on-policy distillation needs one tokenizer.")
            self._check_tokenizers(self.exp.teacher.model.path)
        elif kind == "models":
            built = [build_model(spec, self.mesh) for spec in self.exp.teacher.models]
            self.t_graph = tuple(g for g, _, _ in built)
            self.t_params = tuple(p for _, p, _ in built)
            self.t_sh = tuple(sh for _, _, sh in built)
            vs = vocab_size(self.s_graph, params)
            for j, (g, p, _) in enumerate(built):
                if vocab_size(g, p) != vs:
                    raise ValueError(f"teacher.models[{j}]'s vocabulary ({vocab_size(g, p)}) "
                                     f"differs from the student's ({vs}); on-policy distillation "
                                     "needs one tokenizer.")
                self._check_tokenizers(self.exp.teacher.models[j].path)
        elif kind in ("ema", "initial"):
            self.t_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                                    out_shardings=self.p_sh)(params)

    def _check_lengths(self, params):
        """Every prompt plus ``sampler.max_new_tokens`` must fit each model's position range."""
        new = self.exp.sampler.max_new_tokens
        student = model_config(self.s_graph, params)
        models = [("student", student, lambda e: e.prompt_ids)]
        for j, (g, p) in enumerate(self._teachers(params)):
            models.append(("teacher" if self.exp.teacher.kind != "models" else f"teacher {j}",
                           model_config(g, p), lambda e: e.teacher_prompt_ids or e.prompt_ids))
        for who, cfg, ids in models:
            e = max(self.examples, key=lambda e: len(ids(e)))
            if len(ids(e)) + new > cfg.max_position_embeddings:
                raise D.DataError(
                    f"{self.exp.data.path}:{e.line}: a prompt of {len(ids(e))} tokens plus "
                    f"sampler.max_new_tokens={new} exceeds the {who}'s max_position_embeddings="
                    f"{cfg.max_position_embeddings}; shorten the prompts (data.max_prompt_len) or "
                    "lower sampler.max_new_tokens.")

    def _check_tokenizers(self, t: str):
        s = self.exp.student.path
        if not (s and t):
            return
        from opd_jax.models import load_tokenizer
        from opd_jax.models.hf_io import has_tokenizer
        # A checkpoint without tokenizer files: only the vocabulary size is checked (transformers
        # would build an empty tokenizer of the model's type for it, which compares as different).
        if not (has_tokenizer(s) and has_tokenizer(t)):
            return
        try:
            vs, vt = load_tokenizer(s).get_vocab(), load_tokenizer(t).get_vocab()
        except (OSError, ValueError):
            return
        if vs != vt:
            diff = sorted(set(vs.items()) ^ set(vt.items()))[:3]
            raise ValueError(f"student ({s}) and teacher ({t}) tokenizers differ, e.g. {diff}; "
                             "on-policy distillation needs one tokenizer.")

    # ------------------------------------------------------------------ one iteration

    def _teacher_params(self):
        return self.state.params if self.exp.teacher.kind == "self" else self.t_params

    def _teachers(self, params=None) -> list[tuple]:
        """``[(graphdef, params)]`` of every teacher model (one unless ``kind="models"``)."""
        kind = self.exp.teacher.kind
        if kind == "models":
            return list(zip(self.t_graph, self.t_params))
        if kind == "self":
            return [(self.s_graph, self.state.params if params is None else params)]
        return [(self.t_graph or self.s_graph, self.t_params)]

    def _route_of(self, e: D.Example) -> int | None:
        """The index of the teacher named by ``e``'s ``teacher`` field (None if it names none)."""
        t, v = self.exp.teacher, e.record.get("teacher")
        if isinstance(v, str) and v in t.names:
            return t.names.index(v)
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(t.models):
            return v
        return None

    def _check_routes(self):
        """With routed teachers, every record must name its teacher (checked before compiling)."""
        t = self.exp.teacher
        if t.kind != "models" or t.combine != "route":
            return
        for e in self.examples:
            if self._route_of(e) is None:
                known = list(t.names) or list(range(len(t.models)))
                raise D.DataError(
                    f"{self.exp.data.path}:{e.line}: teacher.combine='route' needs a `teacher` "
                    f"field naming one of {known} (a name of teacher.names or an index), got "
                    f"{e.record.get('teacher')!r}.")

    def _check_inputs(self):
        """The objective's extra inputs can be supplied (checked before compiling)."""
        need = O.required_inputs(self.exp.objective)
        if not need:
            return
        name = O.recipe_name(self.exp.objective)
        if "reward" in need and self.reward_fn is None:
            raise ValueError(f"objective {name!r} trains on a reward: pass reward_fn=f to Trainer, "
                             "f(example, completion_ids) -> float (e.g. a verifier's 0/1); from "
                             "the command line, define reward_fn in the experiment file.")
        terms = {"aux_teacher_logp": "the agreement weights (objective.agreement)",
                 "bad_teacher_logp": "the contrastive term (objective.contrastive_coef)"}
        for extra, what in terms.items():
            if extra in need:
                field = _CONTEXT_FIELDS[extra]
                missing = next((e for e in self.examples if field not in e.record), None)
                if missing is not None:
                    raise D.DataError(f"{self.exp.data.path}:{missing.line}: objective {name!r} "
                                      f"needs a `{field}` field in every record for {what}; "
                                      "add it or turn that term off.")

    def _teacher_weights(self, exs) -> jax.Array | None:
        """Several teachers: each row's weights ``[rows, J]`` (one-hot when routed), else None."""
        t = self.exp.teacher
        if t.kind != "models":
            return None
        if t.combine == "mix":
            w = np.tile(np.asarray(t.mix_weights(), np.float32), (len(exs), 1))
        else:
            w = np.eye(len(t.models), dtype=np.float32)[[self._route_of(e) for e in exs]]
        return self._global(np.repeat(w, self.exp.sampler.num_samples, axis=0))

    def _teacher_hidden(self, t_seq: Sequences, n: int, weights) -> jax.Array:
        """The teacher's completion hidden states (several teachers: combined, see
        :func:`combine_teachers`)."""
        hidden = [self.score_fn(g, p, t_seq, n) for g, p in self._teachers()]
        return hidden[0] if weights is None else self.combine_fn(hidden, weights)

    def _teacher_rollout(self, prompts, mask, key, row_ids, weights):
        """Teacher samples; with routed teachers, each row drawn by its own teacher."""
        rolls = [sample(g, p, prompts, mask, key, cfg=self.exp.sampler, row_ids=row_ids)
                 for g, p in self._teachers()]
        if len(rolls) == 1:
            return rolls[0]
        return self.pick_fn(rolls, jnp.argmax(weights, axis=1))

    def _global(self, x: np.ndarray):
        """A process-local numpy slice → one global array sharded over the data axes."""
        local = jax.local_device_count() == jax.device_count()
        return jax.device_put(x, self.rows) if local else \
            jax.make_array_from_process_local_data(self.rows, x)

    def _local(self, x: jax.Array) -> np.ndarray:
        """This process's rows of a global array sharded over the data axes (inverse of _global)."""
        if jax.process_count() == 1:
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.global_array_to_host_local_array(
            x, self.mesh, P(("data", "fsdp"))))

    def _prompts(self, cursor: int):
        n = self.exp.data.batch_size
        idx = D.global_indices(len(self.examples), self.exp.data.shuffle_seed, cursor, n)
        local = idx[D.host_slice(n, jax.process_index(), jax.process_count())]
        exs = [self.examples[i] for i in local]
        width = max(len(e.prompt_ids) for e in self.examples)
        p, m = D.left_pad([e.prompt_ids for e in exs], width, self.exp.sampler.pad_id)
        tp = tm = None
        if any(e.teacher_prompt_ids is not None for e in self.examples):
            t_width = max(len(e.teacher_prompt_ids or e.prompt_ids) for e in self.examples)
            tp, tm = D.left_pad([e.teacher_prompt_ids or e.prompt_ids for e in exs], t_width,
                                self.exp.sampler.pad_id)
        return exs, p, m, tp, tm, cursor + n

    def _source(self, key, step: int) -> str:
        loop = self.exp.loop
        if step < loop.cold_start_steps:
            return "cold_start"
        if loop.lmbda >= 1.0:
            return "on_policy"
        u = float(jax.random.uniform(jax.random.fold_in(key, 1)))
        if u < loop.lmbda:
            return "on_policy"
        return "seq_kd" if loop.seq_kd else "data"

    def iteration(self) -> dict[str, float]:
        exp, st = self.exp, self.state
        step, cursor = int(st.step), int(st.cursor)
        key = jax.random.fold_in(jax.random.wrap_key_data(st.key), step)
        source = self._source(key, step)
        exs, p, m, tp, tm, new_cursor = self._prompts(cursor)
        rep = lambda x: None if x is None else np.repeat(x, exp.sampler.num_samples, axis=0)  # noqa: E731
        timings = {}
        t0 = time.perf_counter()
        row_ids = self._global(np.arange(len(exs), dtype=np.int32)
                               + cursor + jax.process_index() * len(exs))
        weights = self._teacher_weights(exs)
        with jax.set_mesh(self.mesh):
            if source == "data":
                batch = self._data_batch(exs, p, m, tp, tm)
            else:
                teacher_rolls = source in ("cold_start", "seq_kd")
                sp, sm = (tp, tm) if (teacher_rolls and tp is not None) else (p, m)
                sp, sm, k2 = self._global(sp), self._global(sm), jax.random.fold_in(key, 2)
                if teacher_rolls:
                    roll = self._teacher_rollout(sp, sm, k2, row_ids, weights)
                else:
                    mix = exp.loop.teacher_mix
                    teacher = self._teachers()[0] if mix > 0 else None
                    roll = sample(self.s_graph, st.params, sp, sm, k2, cfg=exp.sampler,
                                  row_ids=row_ids, teacher=teacher, teacher_mix=mix)
                P_ = roll.prompt_len
                batch = _assemble(self._global(rep(p)), self._global(rep(m)), roll.tokens[:, P_:],
                                  roll.completion_mask[:, P_:], roll.logp[:, P_:],
                                  None if tp is None else self._global(rep(tp)),
                                  None if tm is None else self._global(rep(tm)))
            jax.block_until_ready(batch)
            timings["time/sample"] = time.perf_counter() - t0
            if self.reward_fn is not None:
                batch = self._with_rewards(batch, exs)
            t1 = time.perf_counter()
            teacher_params = self._teacher_params()
            hidden = self._teacher_hidden(batch.teacher_sequences, batch.completion_len, weights)
            batch = batch.replace(teacher_hidden=hidden,
                                  extras={**batch.extras, **self._context_extras(exs, batch)})
            jax.block_until_ready(batch)
            timings["time/score"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            fn = self.sft_fn if source == "cold_start" else self.step_fn
            # the student as its own teacher is passed as None: its buffers are donated
            new_state, metrics = fn(st, batch, None if self.exp.teacher.kind == "self"
                                    else teacher_params)
            new_state = new_state.replace(cursor=jnp.asarray(new_cursor, jnp.int32))
            metrics = jax.device_get(metrics)
            timings["time/update"] = time.perf_counter() - t2
        self.state = new_state
        self._update_ema()
        tokens = float(metrics["loss/tokens"])
        out = {k: float(v) for k, v in metrics.items()}
        out.update(timings)
        out.update(self._flops(batch, p, source, int(metrics["loss/max_len"])))
        for phase in ("sample", "score", "update"):
            out[f"throughput/{phase}_gflops_per_s"] = (out[f"flops/{phase}"] / 1e9
                                                       / max(timings[f"time/{phase}"], 1e-9))
        out["time/step"] = sum(timings.values())
        out["throughput/tokens_per_s"] = tokens / max(out["time/step"], 1e-9)
        out["source/on_policy"] = float(source == "on_policy")
        out["source/cold_start"] = float(source == "cold_start")
        return out

    def _context_extras(self, exs, batch: TrainBatch) -> dict:
        """Sampled-token log-probs of the teacher under the records' extra contexts:
        ``aux_teacher_prompts_ids`` (K each) → ``aux_teacher_logp [B, N, K]``,
        ``bad_teacher_prompt_ids`` → ``bad_teacher_logp [B, N]``."""
        out = {}
        k = self.exp.sampler.num_samples
        if not any(f in e.record for e in exs for f in _CONTEXT_FIELDS.values()):
            return out
        if self.exp.teacher.kind == "models":
            raise TrainingError("auxiliary teacher contexts (aux_teacher_prompts_ids, "
                                "bad_teacher_prompt_ids) need one teacher, not "
                                "teacher.kind='models'")
        graphdef, params = self._teachers()[0]

        def score(prompt_lists):
            width = max(len(x) for x in prompt_lists)
            p, m = D.left_pad(prompt_lists, width, self.exp.sampler.pad_id)
            rep = lambda x: self._global(np.repeat(x, k, axis=0))  # noqa: E731
            return self.context_logp_fn(graphdef, params, rep(p), rep(m), batch.targets,
                                        batch.loss_mask, self.exp.objective.temperature,
                                        self.exp.step.chunk_size)
        aux = [e.record.get("aux_teacher_prompts_ids") for e in exs]
        if any(a is not None for a in aux):
            if any(a is None or len(a) != len(aux[0]) for a in aux):
                raise TrainingError("every record needs the same number of "
                                    "aux_teacher_prompts_ids contexts")
            out["aux_teacher_logp"] = jnp.stack(
                [score([tuple(a[j]) for a in aux]) for j in range(len(aux[0]))], axis=-1)
        bad = [e.record.get("bad_teacher_prompt_ids") for e in exs]
        if any(b is not None for b in bad):
            if any(b is None for b in bad):
                raise TrainingError("bad_teacher_prompt_ids must be given for every record")
            out["bad_teacher_logp"] = score([tuple(b) for b in bad])
        return out

    def _flops(self, batch: TrainBatch, prompts: np.ndarray, source: str, steps: int):
        """Analytic model FLOPs of this iteration's phases (all hosts together)."""
        s_cfg = model_config(self.s_graph, self.state.params)
        t_cfgs = [model_config(g, p) for g, p in self._teachers()]
        rows, seq = batch.student.tokens.shape
        n_prompts = prompts.shape[0] * jax.process_count()
        width = prompts.shape[1]
        if source == "data":
            sample_f = 0.0
        elif source in ("cold_start", "seq_kd"):  # every teacher samples every row
            sample_f = sum(F.sample_flops(c, n_prompts, width, rows, steps) for c in t_cfgs)
        else:
            sample_f = F.sample_flops(s_cfg, n_prompts, width, rows, steps)
            if self.exp.loop.teacher_mix > 0:
                sample_f += F.sample_flops(t_cfgs[0], n_prompts, width, rows, steps)
        n, t_len = batch.completion_len, batch.teacher_sequences.tokens.shape[1]
        return {"flops/sample": sample_f,
                "flops/score": sum(F.score_flops(c, rows, t_len) for c in t_cfgs),
                "flops/update": F.update_flops(s_cfg, None, rows, seq, n)  # + each teacher head
                + sum(F.head_flops(c, rows * n) for c in t_cfgs)}

    def _data_batch(self, exs, p, m, tp, tm):
        if any(e.completion_ids is None for e in exs):
            raise TrainingError("an off-policy step (loop.lmbda < 1, seq_kd off) trains on the "
                                "data's reference completions, but some records have none")
        n = self.exp.sampler.new_token_bucket()
        c, cm = D.right_pad([e.completion_ids for e in exs], n, self.exp.sampler.pad_id)
        g = self._global
        return _assemble(g(p), g(m), g(c), g(cm), g(np.zeros(c.shape, np.float32)),
                         None if tp is None else g(tp), None if tm is None else g(tm))

    def _with_rewards(self, batch, exs):
        comp, mask = self._local(batch.targets), self._local(batch.loss_mask)  # this host's rows
        k = self.exp.sampler.num_samples
        r = np.array([self.reward_fn(exs[i // k], comp[i][mask[i]]) for i in range(len(comp))],
                     np.float32)
        reward = self._global(np.broadcast_to(r[:, None], comp.shape).copy())
        return batch.replace(extras={**batch.extras, "reward": reward})

    def _update_ema(self):
        t = self.exp.teacher
        if t.kind == "ema" and int(self.state.step) % t.ema_every == 0:
            self.t_params = self.ema_fn(self.t_params, self.state.params, t.ema_decay)

    # ------------------------------------------------------------------ checkpoints and the run

    def _items(self):
        items = {"state": self.state}
        if self.exp.teacher.kind in ("ema", "initial"):
            items["teacher"] = self.t_params
        return items

    def save(self):
        step = int(self.state.step)
        self.ckpt.save(step, self._items(), {"step": step, "config": to_dict(self.exp)})

    def restore(self, step: int | None = None) -> bool:
        """Restore the latest (or ``step``'s) checkpoint onto this run's mesh; False if none."""
        if self.ckpt.latest_step() is None and step is None:
            return False
        targets = {"state": abstract(self.state, self.state_sh)}
        if "teacher" in self._items():
            targets["teacher"] = abstract(self.t_params, self.p_sh)
        items, _ = self.ckpt.restore(step, targets)
        self.state = items["state"]
        if "teacher" in items:
            self.t_params = items["teacher"]
        return True

    def _check_finite(self, metrics: dict[str, float], step: int):
        """Stop before a non-finite loss or update reaches a checkpoint (the state is not saved)."""
        bad = [k for k in ("loss/total", "opt/grad_norm", "opt/update_norm")
               if not math.isfinite(metrics[k])]
        if bad:
            last = self.ckpt.latest_step()
            raise FloatingPointError(
                f"{bad[0]} is {metrics[bad[0]]} at step {step}; stopping without saving. The last "
                f"good checkpoint ({'none' if last is None else f'step {last}'}) in "
                f"{self.ckpt.directory} is intact; lower optim.lr or check the data.")

    def _check_resume(self, step: int | None):
        """``ckpt.resume_step`` must name a finished checkpoint with none after it."""
        have = self.ckpt.all_steps()
        if step is not None and step not in have:
            raise CheckpointNotFound(f"no checkpoint for step {step} in {self.ckpt.directory}; "
                                     f"available: {have} (ckpt.resume_step)")
        later = [s for s in have if step is not None and s > step]
        if later:
            raise ValueError(f"ckpt.resume_step={step}, but {self.ckpt.directory} also holds the "
                             f"later checkpoints {later}, which this run would not save over; "
                             "move them out of the directory (or unset ckpt.resume_step).")

    def run_info(self) -> dict:
        """Where this run executes: the mesh, its devices, the processes and the versions."""
        d = self.mesh.devices.flat[0]
        return {"mesh": {k: int(v) for k, v in self.mesh.shape.items()},
                "devices": int(self.mesh.devices.size), "platform": d.platform,
                "device_kind": getattr(d, "device_kind", d.platform),
                "processes": jax.process_count(), "jax": jax.__version__}

    def run(self) -> dict[str, float]:
        exp = self.exp
        self._check_resume(exp.ckpt.resume_step)
        self.restore(exp.ckpt.resume_step)
        lead = jax.process_index() == 0  # one process writes the run's files; Orbax syncs saves
        if lead:
            write_json(exp, os.path.join(exp.run.workdir, "config.json"))
            write_json(self.run_info(), os.path.join(exp.run.workdir, "run_info.json"))
        writer = MetricsWriter(exp.run.workdir, tensorboard=exp.run.tensorboard,
                               wandb=exp.run.wandb, config=to_dict(exp), enabled=lead)
        progress = Progress(exp.run.steps, int(self.state.step), enabled=exp.run.progress and lead)
        metrics = {}
        try:
            while int(self.state.step) < exp.run.steps:
                metrics = self.iteration()
                step = int(self.state.step)
                self._check_finite(metrics, step)
                if step % exp.run.log_every == 0 or step == exp.run.steps:
                    writer.write(step, metrics)
                progress.update(step, metrics["loss/total"], metrics["throughput/tokens_per_s"])
                if exp.ckpt.every and step % exp.ckpt.every == 0:
                    self.save()
            if self.ckpt.latest_step() != int(self.state.step):
                self.save()
        finally:
            self.ckpt.wait()
            writer.close()
        return metrics


def _eval_features(s_graph, s_params, t_graph, t_params, batch: TrainBatch, temperature: float):
    """Exact per-token reverse KL, forward KL and entropies of the student vs the teacher."""
    n = batch.completion_len
    s = nnx.merge(s_graph, s_params)
    t_hidden, t_head = teacher_view(batch, t_graph, t_params, n)
    feats = {
        "reverse_kl": O.feature(O.reverse_kl, "logits", "teacher_logits", temperature=temperature),
        "forward_kl": O.feature(O.forward_kl, "logits", "teacher_logits", temperature=temperature),
        "student_entropy": O.feature(O.token_entropy, "logits", temperature=temperature),
        "teacher_entropy": O.feature(O.token_entropy, "teacher_logits", temperature=temperature),
    }
    f = O.compute_features(feats, tokens=batch.targets, mask=batch.loss_mask,
                           hidden=completion_hidden(s, batch.student, n), head=s.lm_head_weight(),
                           teacher_hidden=t_hidden, teacher_head=t_head)
    m = batch.loss_mask.astype(jnp.float32)
    return {f"eval/{k}": jnp.sum(v * m) / jnp.maximum(jnp.sum(m), 1.0) for k, v in f.items()}


_eval_jit = jax.jit(_eval_features, static_argnums=(0, 2, 5))


def evaluate(trainer: Trainer, *, cursor: int = 0, seed: int = 12345) -> dict[str, float]:
    """Exact divergences to the teacher on fresh student samples of one batch of prompts.

    The prompts are those the data order gives at ``cursor``; the samples use their own key, so
    evaluation never consumes the training stream.
    """
    exp = trainer.exp
    exs, p, m, tp, tm, _ = trainer._prompts(cursor)
    rep = lambda x: None if x is None else np.repeat(x, exp.sampler.num_samples, axis=0)  # noqa: E731
    g = trainer._global
    with jax.set_mesh(trainer.mesh):
        roll = sample(trainer.s_graph, trainer.state.params, g(p), g(m), jax.random.key(seed),
                      cfg=exp.sampler)
        P_ = roll.prompt_len
        batch = _assemble(g(rep(p)), g(rep(m)), roll.tokens[:, P_:], roll.completion_mask[:, P_:],
                          roll.logp[:, P_:], None if tp is None else g(rep(tp)),
                          None if tm is None else g(rep(tm)))
        batch = batch.replace(teacher_hidden=trainer._teacher_hidden(
            batch.teacher_sequences, batch.completion_len, trainer._teacher_weights(exs)))
        out = _eval_jit(trainer.s_graph, trainer.state.params, trainer.t_graph or trainer.s_graph,
                        trainer._teacher_params(), batch, exp.objective.temperature)
    return {k: float(v) for k, v in jax.device_get(out).items()}
