"""The on-policy loop: sample from the student, score with the teacher, update. The only impure
code of the training system (files, clocks, the Python loop); everything it calls is jitted.

One iteration at optimizer step ``s`` (all randomness from the state's key folded with ``s``, all
data from the state's cursor, so a resumed run repeats an uninterrupted one exactly):

1. choose the batch's source (:func:`~opd_jax.training.batches.choose_source`): teacher
   rollouts during the cold start; else fresh student samples with probability ``loop.lmbda``
   (GKD's lambda), otherwise teacher samples (``seq_kd``) or the data's reference completions;
2. build the batch from it (the student samples, optionally mixing teacher tokens, or some
   rows replaced by the data's reference completions: ``loop.golden_fraction``; or multi-turn
   episodes with the environment's replies: ``loop.turns``, :mod:`.episodes`);
3. score it with the teacher (:mod:`opd_jax.teachers`), only if the objective reads a teacher;
   compute rewards and the extra teacher contexts only if the objective takes them;
4. jitted train steps with the objective (the SFT objective during the cold start): one, or one
   per slice of the batch's prompts (``loop.minibatches``), ``loop.epochs`` times;
5. let the teacher follow the student (EMA); evaluate on the held-out data and export the
   student when due (:mod:`~opd_jax.training.outputs`); run the step callbacks, log, save.

With ``teacher.served.overlap`` the next step's batch is sampled and sent to the teacher server
before this step's update, so that the server scores it while the student updates (that batch
is then one step off-policy).
"""

import dataclasses
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import opd_jax.objectives as O
from opd_jax import data as D
from opd_jax import environments as EN
from opd_jax.config import to_dict, write_json
from opd_jax.sampling.sampler import model_config
from opd_jax.sharding import make_mesh
from opd_jax.teachers import Runtime, Student, build_teacher, teacher_class
from opd_jax.teachers.local import sequence_logp
from opd_jax.training import batches as B
from opd_jax.training import checks as C
from opd_jax.training import episodes as E
from opd_jax.training import flops as F
from opd_jax.training import outputs, safety, shared
from opd_jax.training import text as T
from opd_jax.training.batch import TrainBatch
from opd_jax.training.build import build_model
from opd_jax.training.checkpoint import Checkpointer
from opd_jax.training.config import Experiment, resolve
from opd_jax.training.errors import TrainingError
from opd_jax.training.evaluation import evaluate
from opd_jax.training.logging import MetricsWriter, Progress, combine_updates
from opd_jax.training.optim import make_optimizer
from opd_jax.training.peers import for_run as peer_contexts
from opd_jax.training.step import make_train_step, sharded_init_state

__all__ = ["StepCallback", "Trainer", "TrainingError", "evaluate"]

# Called after every iteration of ``Trainer.run`` (one batch: one optimizer step unless loop.minibatches
# or loop.epochs say more; after the finiteness check and the step's held-out evaluation and export,
# before the metrics are logged and the checkpoint is saved) as ``fn(trainer, step, metrics)``; the
# metrics it returns (or None) are logged with the step's. ``step == trainer.exp.run.steps`` is the last.
StepCallback = Callable[["Trainer", int, dict[str, float]], dict[str, float] | None]


class _Prepared(NamedTuple):
    """A step's batch before its update: ``finish()`` gives it scored by the teacher."""
    step: int
    source: str
    prompts: B.Prompts
    finish: Callable[[], TrainBatch]
    scored: bool
    stats: dict  # of the sampling: the teacher's share when teacher-mixed


class Trainer:
    """Builds everything an experiment needs; ``run()`` then trains it, resuming when possible.

    Public surface: the constructor (build), :meth:`run`, :meth:`iteration` (one step),
    :meth:`evaluate`, :meth:`evaluate_heldout`, :meth:`export` (:meth:`export_dir`),
    :meth:`save`, :meth:`restore`, :meth:`prompts`; and what they act on: ``exp`` (the resolved
    experiment), ``state`` (the :class:`~opd_jax.training.step.TrainState`), ``s_graph`` (the
    student's graph definition: ``nnx.merge(s_graph, state.params)`` is the student),
    ``teacher``, ``tokenizer``, ``examples``, ``eval_examples``, ``reward_fn``, ``environment``, ``mesh``,
    ``rows``, ``ckpt`` and ``callbacks`` (a list of :data:`StepCallback`).

    The text set-up is the command line's (:mod:`~opd_jax.training.text`): without
    ``examples``, ``data.path`` is read with the student checkpoint's tokenizer (or
    ``tokenizer``, or ``data.tokenizer``) and chat template, ``sampler.eos_ids`` default to the
    checkpoint's generation config, ``reward`` names the reward function unless ``reward_fn``
    is given, and ``environment`` (multi-turn episodes' replies) the one the config names.
    """

    def __init__(self, exp: Experiment, *, examples: list[D.Example] | None = None, tokenizer=None,
                 reward_fn: Callable[[D.Example, np.ndarray], float] | None = None, mesh=None,
                 environment: EN.Environment | None = None, callbacks: tuple[StepCallback, ...] = ()):
        exp = resolve(exp)
        self.mesh = mesh if mesh is not None else make_mesh(**dataclasses.asdict(exp.mesh))
        self.rows = B.Rows(self.mesh)
        self.callbacks = list(callbacks)
        # Checks and objectives first: they need no model, so a bad experiment fails at once.
        spec = exp.teacher
        C.check_layout(exp, self.mesh.shape, jax.process_count())
        kind = teacher_class(spec)
        C.check_teacher_use(exp, kind.refusals(spec))
        kind.check(exp)  # what its kind cannot serve (a served teacher's top-k, ...)
        C.check_alignment(exp)
        C.check_policy_gradient(exp)
        sparse = kind.sparse
        # Text: tokenizers, EOS ids, records, reward function (still no model built).
        text = T.prepare(exp, tokenizer=tokenizer, examples=examples, reward_fn=reward_fn, env=environment)
        self.exp = exp = text.exp
        self.tokenizer, self.reward_fn, self.environment = text.tokenizer, text.reward_fn, text.environment
        self.responder = T.responder(exp, text)
        self.peers = peer_contexts(exp, text)
        self.examples, self.eval_examples = text.examples, text.eval_examples
        self.eval_cfg = outputs.heldout_sampler(exp)
        C.check_routes(spec, self.examples, exp.data.path)
        C.check_inputs(exp, self.examples, self.reward_fn is not None, self.environment, self.eval_examples)
        self.rewarded = "reward" in O.required_inputs(exp.objective)
        self.reads_teacher = O.reads_teacher(exp.objective)
        # token diagnostics compare distributions: none for a teacher of sampled tokens only
        diagnostics = (exp.run.diagnostics_k or None) \
            if self.reads_teacher and kind.distribution else None
        # Built once per process for the same configs (shared.py: so are the train steps below).
        obj_key = (exp.objective, not sparse, diagnostics)
        self.objective = shared.cached(("objective", *obj_key), lambda: O.build_objective(
            exp.objective, dense_teacher=not sparse, diagnostics_k=diagnostics))
        sft = O.SFTConfig(temperature=exp.objective.temperature)
        self.sft = shared.cached(("objective", sft), lambda: O.build_objective(sft))
        self.contexts = sorted(set(C.CONTEXT_FIELDS) & O.required_inputs(exp.objective))

        self.s_graph, params, self.p_sh = build_model(exp.student, self.mesh)
        runtime = Runtime(self.rows, exp.sampler, exp.objective.temperature, exp.step.chunk_size, text)
        self.teacher = build_teacher(spec, Student(self.s_graph, params, self.p_sh, exp.student.path,
                                                   self.tokenizer), self.mesh, runtime, exp.objective)
        limits = [("student", model_config(self.s_graph, params).max_position_embeddings, False)]
        limits += [(who, n, True) for who, n in self.teacher.position_limits(params)]
        for exs, new, path, turns in ((self.examples, exp.sampler.max_new_tokens, exp.data.path, exp.loop.turns),
                                      (self.eval_examples, self.eval_cfg.max_new_tokens, exp.eval.path,
                                       exp.eval.turns)):
            C.check_lengths(exs, new, limits, path, turns, self.environment)
        if self.peers is not None:
            self.peers.check_positions(limits, exp.sampler.max_new_tokens)

        tx_key = (exp.optim, exp.run.steps)
        self.tx = shared.cached(("optimizer", *tx_key), lambda: make_optimizer(*tx_key))
        with jax.set_mesh(self.mesh):
            self.state, self.state_sh = sharded_init_state(params, self.tx, self.objective,
                                                           exp.run.seed, self.mesh, self.p_sh)
        common = dict(graphdef=self.s_graph, tx=self.tx, cfg=exp.step, state_shardings=self.state_sh)
        t_graph = self.teacher.graphdef if self.reads_teacher else None
        step_key = (tx_key, exp.step, self.s_graph, jax.tree.structure(self.state_sh),
                    tuple(jax.tree.leaves(self.state_sh)))
        self.step_fn = shared.cached(("train step", obj_key, t_graph, *step_key), lambda: make_train_step(
            objective=self.objective, teacher_graphdef=t_graph, drift=O.needs_behavior_logp(exp.objective),
            **common))
        self.sft_fn = shared.cached(("train step", sft, None, *step_key), lambda: make_train_step(
            objective=self.sft, teacher_graphdef=None, **common))
        self.ckpt = Checkpointer(os.path.join(exp.run.workdir, "checkpoints"),
                                 keep=exp.ckpt.keep, async_save=exp.ckpt.async_save)
        self._ahead: _Prepared | None = None  # the next step's batch (teacher.overlap)
        self._widths = None  # the data set's prompt widths (B.prompt_widths), found once

    # ------------------------------------------------------------------ one iteration

    def prompts(self, cursor: int) -> B.Prompts:
        """This host's prompts of the step that starts at data position ``cursor``."""
        d = self.exp.data
        if self._widths is None:
            self._widths = B.prompt_widths(self.examples)
        return B.prompts_at(self.examples, cursor, batch_size=d.batch_size, widths=self._widths,
                            shuffle_seed=d.shuffle_seed, pad_id=self.exp.sampler.pad_id)

    def iteration(self) -> dict[str, float]:
        """One batch's optimizer steps (see the module docstring; one unless ``loop.minibatches``
        or ``loop.epochs`` say more); returns their metrics."""
        state = self.state
        step = int(state.step)
        timings = {}
        with jax.set_mesh(self.mesh):
            t0 = time.perf_counter()
            ahead, self._ahead = self._ahead, None
            now = ahead if ahead is not None and ahead.step == step else self._prepare(
                step, int(state.cursor))
            span = self.exp.loop.updates  # optimizer steps of this batch
            if self.teacher.overlap and step + span < self.exp.run.steps:
                # the next batch, from the weights before this update, scored during the update
                self._ahead = self._prepare(step + span, now.prompts.next_cursor)
            timings["time/sample"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            batch = jax.block_until_ready(now.finish())
            timings["time/score"] = time.perf_counter() - t1
            if self.rewarded and now.source != "cold_start" and "reward" not in batch.extras:
                batch = B.with_rewards(self.rows, batch, now.prompts, self.reward_fn,
                                       episodes=now.source == "on_policy" and self.exp.loop.turns > 1)
            t2 = time.perf_counter()
            fn = self.step_fn if now.source != "cold_start" else self.sft_fn
            new_state, metrics = self._updates(fn, state, batch, now.scored)
            new_state = new_state.replace(cursor=jnp.asarray(now.prompts.next_cursor, jnp.int32))
            timings["time/update"] = time.perf_counter() - t2
        self.state = new_state
        return self._metrics(metrics, timings, batch, now)

    def _updates(self, fn, state, batch: TrainBatch, scored: bool):
        """The optimizer steps of one batch (``loop.minibatches`` slices of it, ``loop.epochs``
        times), the teacher following the student after each; their combined metrics."""
        loop, metrics = self.exp.loop, []
        for _ in range(loop.epochs):
            for i in range(loop.minibatches):
                teacher_params = self.teacher.step_params(state.params) if scored else None
                state, m = fn(state, B.minibatch(self.rows, batch, i, loop.minibatches), teacher_params)
                self.teacher.update(state)
                metrics.append(jax.device_get(m))
        return state, combine_updates(metrics)

    def _prepare(self, step: int, cursor: int) -> "_Prepared":
        """Step ``step``'s batch (from the data at ``cursor``, sampled with the current weights),
        with the teacher's scoring begun if the step's objective reads a teacher."""
        key = jax.random.fold_in(jax.random.wrap_key_data(self.state.key), step)
        source = B.choose_source(self.exp.loop, key, step)
        prompts = self.prompts(cursor)
        batch, stats = self._batch(source, prompts, key, step)
        if self.peers is not None and source == "on_policy":  # the teacher reads the row's peers
            batch, peer_stats = self.peers(self.rows, batch, prompts)
            stats.update(peer_stats)
        batch = jax.block_until_ready(batch)
        scored = self.reads_teacher and source != "cold_start"  # cold start: the SFT objective
        if not scored:
            return _Prepared(step, source, prompts, lambda: batch, False, stats)
        params = self.state.params
        pending = self.teacher.start_score(batch, prompts, params)
        finish = (lambda: B.with_contexts(self.rows, pending(), prompts, self.teacher, params,
                                          self.contexts, self.exp.sampler)) if self.contexts else pending
        return _Prepared(step, source, prompts, finish, True, stats)

    def _batch(self, source: str, prompts: B.Prompts, key, step: int) -> tuple[TrainBatch, dict]:
        """The batch of step ``source`` (data completions, teacher rollouts or student samples) and
        its sampling's metrics (teacher-mixed: the step's ``teacher_mix`` and the teacher's share)."""
        stats, golden, draft_error = {}, None, None
        if source == "data":
            return B.from_data(self.rows, prompts, self.exp.sampler, self.exp.loop.completion_slices), stats
        sp, sm = B.sampling_prompts(self.rows, prompts, source)
        key, row_ids = jax.random.fold_in(key, 2), self.rows.to_global(prompts.row_ids)
        params = self.state.params
        if source in B.TEACHER_ROLLOUTS:
            roll = self.teacher.rollout(sp, sm, key, row_ids, prompts.examples, params)
        else:
            roll, stats, draft_error = B.student_rollout(self.exp, self.s_graph, params, self.teacher, sp, sm, key,
                                                         row_ids, step)
            if self.exp.loop.golden_fraction:  # StableOPD's rollout mixture
                golden = B.golden_rows(self.exp.loop, key, prompts)
                stats["sample/golden_frac"] = float(np.mean(golden))
        n, t = self.exp.sampler.num_samples, self.exp.objective.temperature
        if source == "on_policy" and self.exp.loop.turns > 1:  # multi-turn episodes
            mix = self.exp.loop.teacher_mix_at(step)
            more = E.student_turns(self.s_graph, params, B.student_sampler(self.exp), self.rows, prompts, key,
                                   teacher=self.teacher.mixer(params) if mix > 0 else None, teacher_mix=mix)
            batch, turn_stats = E.episodes(
                self.rows, prompts, roll, num_samples=n, turns=self.exp.loop.turns, pad_id=self.exp.sampler.pad_id,
                next_turn=more, responder=self.responder)
            return batch, {**stats, **turn_stats}  # the teacher's share over every turn, not turn 1's
        batch = B.from_rollout(self.rows, prompts, roll, n, self.exp.loop.completion_slices,
                               golden=golden, pad_id=self.exp.sampler.pad_id, draft_error=draft_error)
        if golden is not None:  # the golden rows' behaviour log-prob: the student's own
            batch = B.with_own_logp(self.rows, batch, golden, n, lambda b: sequence_logp(
                self.s_graph, params, b.student, b.targets, b.loss_mask, b.group, t, self.exp.step.chunk_size))
        return batch, stats

    def _metrics(self, metrics, timings, batch: TrainBatch, now: "_Prepared") -> dict[str, float]:
        prompts, source, scored = now.prompts, now.source, now.scored
        out = {k: float(v) for k, v in metrics.items()}
        out.update(timings)
        out.update(now.stats)
        rows, seq = batch.student.tokens.shape
        # speculative rollouts: both models read draft_tokens + 1 tokens per block of the teacher's
        steps = int(metrics["loss/max_len"]) * (self.exp.loop.draft_tokens + 1) / now.stats.get(
            "sample/acceptance_length", self.exp.loop.draft_tokens + 1)
        out.update(F.iteration_flops(
            model_config(self.s_graph, self.state.params),
            [model_config(g, p) for g, p in self.teacher.models(self.state.params)],
            source=source, rows=rows, seq_len=seq, completion_len=batch.completion_len,
            teacher_len=batch.teacher_sequences.tokens.shape[1],
            prompts=prompts.tokens.shape[0] * jax.process_count(),
            prompt_len=prompts.tokens.shape[1], decode_steps=round(steps),
            teacher_mix=now.stats.get("sample/teacher_mix", 0.0) > 0 or self.exp.loop.draft_tokens > 0, scored=scored,
            group=batch.group, teacher_group=batch.teacher_rows_group))
        out["flops/update"] *= self.exp.loop.epochs  # each epoch trains on the whole batch
        for phase in ("sample", "score", "update"):
            out[f"throughput/{phase}_gflops_per_s"] = (out[f"flops/{phase}"] / 1e9
                                                       / max(timings[f"time/{phase}"], 1e-9))
        out["time/step"] = sum(timings.values())
        out["throughput/tokens_per_s"] = out["loss/tokens"] / max(out["time/step"], 1e-9)
        out["source/on_policy"] = float(source == "on_policy")
        out["source/cold_start"] = float(source == "cold_start")
        if scored:
            out.update(self.teacher.metrics())
        return out

    def evaluate(self, *, cursor: int = 0, seed: int = 12345) -> dict[str, float]:
        """Divergences to the teacher on fresh student samples (see :func:`evaluate`)."""
        return evaluate(self, cursor=cursor, seed=seed)

    def evaluate_heldout(self) -> dict:
        """The student as it is now on the held-out records of ``eval.path``: pass@k, lengths,
        truncation, token diagnostics (see :mod:`~opd_jax.training.outputs`)."""
        if self.eval_examples is None:
            raise ValueError("no held-out data to evaluate on: set eval.path")
        return outputs.evaluate_heldout(self, self.eval_cfg)

    def export(self, path: str | None = None, *, dtype: str | None = None) -> str:
        """Write the student as it is now as a Hugging Face checkpoint (weights, tokenizer,
        generation config) at ``path`` (default ``<workdir>/hf/step_<step>``), whole or not at
        all, replacing one there; ``dtype`` ``"float32"``/``"bfloat16"`` (default
        ``ckpt.export_dtype``, else the parameters'). Every process calls it."""
        path = path or self.export_dir()
        return outputs.export_student(self, path, dtype or self.exp.ckpt.export_dtype)

    def export_dir(self, step: int | None = None) -> str:
        """Where the run exports the student of ``step`` (default: the current step)."""
        step = int(self.state.step) if step is None else step
        return outputs.export_dir(self.exp.run.workdir, step)

    # ------------------------------------------------------------------ checkpoints and the run

    def save(self) -> None:
        """Checkpoint the train state (and the teacher's own state) at the current step."""
        step = int(self.state.step)
        self.ckpt.save_train(step, self.state, self.teacher.checkpoint_items(),
                             {"step": step, "config": to_dict(self.exp)})

    def restore(self, step: int | None = None) -> bool:
        """Restore the latest (or ``step``'s) checkpoint onto this run's mesh; False if none."""
        if self.ckpt.latest_step() is None and step is None:
            return False
        self.state, items = self.ckpt.restore_train(step, self.state, self.state_sh, self.teacher.restore_targets())
        self.teacher.load(items)
        self._ahead = None  # a batch prepared from other weights
        return True

    def run_info(self) -> dict:
        """Where this run executes: the mesh, its devices, the processes and the versions."""
        d = self.mesh.devices.flat[0]
        return {"mesh": {k: int(v) for k, v in self.mesh.shape.items()},
                "devices": int(self.mesh.devices.size), "platform": d.platform,
                "device_kind": getattr(d, "device_kind", d.platform),
                "processes": jax.process_count(), "jax": jax.__version__}

    def run(self, until: int | None = None) -> dict[str, float]:
        """Train from the latest checkpoint (if any) to step ``until`` (default ``run.steps``);
        returns the last step's metrics."""
        exp = self.exp
        last = exp.run.steps if until is None else until
        safety.check_resume_step(self.ckpt, exp.ckpt.resume_step)
        record = safety.config_record(exp, self.ckpt)
        self.restore(exp.ckpt.resume_step)
        lead = jax.process_index() == 0  # one process writes the run's files; Orbax syncs saves
        if lead:
            write_json(record, os.path.join(exp.run.workdir, "config.json"))
            write_json(self.run_info(), os.path.join(exp.run.workdir, "run_info.json"))
        writer = MetricsWriter(exp.run.workdir, tensorboard=exp.run.tensorboard,
                               wandb=exp.run.wandb, config=to_dict(exp), enabled=lead)
        progress = Progress(last, int(self.state.step), enabled=exp.run.progress and lead)
        metrics = {}
        try:
            if self.eval_examples and exp.eval.at_start and int(self.state.step) == 0:
                writer.write(0, outputs.record(self, 0, self.evaluate_heldout()))
            ran_last = False
            while int(self.state.step) < last:
                metrics = self.iteration()
                step = int(self.state.step)
                safety.check_finite(metrics, step, self.ckpt)
                evaluated = outputs.at_step(self, step)
                metrics.update(evaluated)
                ran_last = step == exp.run.steps
                for callback in self.callbacks:
                    metrics.update(callback(self, step, metrics) or {})
                if outputs.due(exp.run.log_every, step, last, exp.loop.updates) or evaluated:
                    writer.write(step, metrics)
                progress.update(step, metrics["loss/total"], metrics["throughput/tokens_per_s"])
                if exp.ckpt.every and outputs.due(exp.ckpt.every, step, -1, exp.loop.updates):
                    self.save()
            if self.ckpt.latest_step() != int(self.state.step):
                self.save()
            if int(self.state.step) == exp.run.steps and not ran_last:
                # a finished run resumed: the final evaluation and export, if not written yet
                # (e.g. asked for after it finished)
                evaluated = outputs.at_step(self, exp.run.steps, missing_only=True)
                if evaluated:
                    writer.write(exp.run.steps, evaluated)
        finally:
            self.ckpt.wait()
            writer.close()
        return metrics
