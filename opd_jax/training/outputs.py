"""What a run writes besides its checkpoints: the held-out evaluation and the Hugging Face export
of the student.

Both act at optimizer steps (every ``eval.every`` / ``ckpt.export_every`` steps and at the last,
``run.steps``) on the parameters after that step's update:

- evaluation (``eval.path``): :func:`opd_jax.evaluate.evaluate` on the held-out records with the
  run's reward function, its sampler (``eval.max_new_tokens``, ``eval.temperature``) and, where
  the run has one local teacher model of the student's tokenizer, the token diagnostics against
  it (at the loss temperature, top-``run.diagnostics_k`` overlap; none with
  ``run.diagnostics_k=0``). Process 0 writes
  ``<workdir>/eval/<step>.json`` atomically; the float results, prefixed ``eval/``, join that
  step's metrics. Evaluation has its own PRNG key (``run.seed``; the same draws at every step,
  so steps compare on common random numbers) and never touches the training stream.
- export (``ckpt.export``, ``ckpt.export_every``): :func:`opd_jax.export.export` to
  ``<workdir>/hf/step_<N>`` with the tokenizer, the EOS ids and the source checkpoint's
  generation defaults, written whole or not at all (a step redone after a resume replaces its
  export). On several hosts the parameters are gathered and process 0 writes.
"""

import os

import jax
import numpy as np

from opd_jax import export as X
from opd_jax.evaluate import evaluate, write_result
from opd_jax.sampling import SamplerConfig


def due(every: int, step: int, last: int, span: int = 1) -> bool:
    """Whether something done every ``every`` steps (0: only at the end) is due at ``step``,
    reached from ``step - span`` (one sampled batch's optimizer steps: a multiple of ``every`` in
    between counts)."""
    return step == last or (every > 0 and step % every < span)


def eval_file(workdir: str, step: int) -> str:
    return os.path.join(workdir, "eval", f"{step}.json")


def export_dir(workdir: str, step: int) -> str:
    return os.path.join(workdir, "hf", f"step_{step}")


def on_lead(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (what it sees of the files only it writes)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def heldout_sampler(exp) -> SamplerConfig:
    """The sampler of the held-out evaluation: the run's, with ``eval.max_new_tokens`` and
    ``eval.temperature`` where set (a larger completion bucket added if needed)."""
    e, s = exp.eval, exp.sampler
    n = e.max_new_tokens or s.max_new_tokens
    buckets = s.new_token_buckets
    if buckets and n > buckets[-1]:
        buckets = buckets + (n,)
    return s.replace(num_samples=1, max_new_tokens=n, new_token_buckets=buckets,
                     temperature=s.temperature if e.temperature is None else e.temperature)


def evaluate_heldout(trainer, cfg: SamplerConfig) -> dict:
    """The evaluation of ``trainer``'s student as it is now on its held-out records."""
    exp, params = trainer.exp, trainer.state.params
    local = trainer.teacher.models(params)
    # (a teacher of another tokenizer has no distribution over the student's vocabulary)
    teacher = local[0] if len(local) == 1 and exp.run.diagnostics_k and \
        trainer.teacher.distribution else None
    diagnostics = dict(teacher=teacher, diagnostics_k=exp.run.diagnostics_k) if teacher else {}
    if exp.eval.draft_tokens:  # the student drafting for the teacher's model
        diagnostics.update(target=trainer.teacher.mixer(params), draft_tokens=exp.eval.draft_tokens)
    examples = trainer.eval_examples
    return evaluate(trainer.s_graph, params, examples, reward_fn=trainer.reward_fn, cfg=cfg,
                    k=exp.eval.k, seed=exp.run.seed,
                    batch_size=min(exp.eval.batch_size or exp.data.batch_size, len(examples)),
                    mesh=trainer.mesh, temperature=exp.objective.temperature,
                    chunk_size=exp.step.chunk_size, turns=exp.eval.turns, responder=trainer.responder,
                    **diagnostics)


def record(trainer, step: int, result: dict) -> dict[str, float]:
    """Write ``result`` to ``<workdir>/eval/<step>.json`` (process 0) and return its metrics."""
    exp = trainer.exp
    if jax.process_index() == 0:
        write_result({"step": step, **result, "data": exp.eval.path,
                      "max_new_tokens": trainer.eval_cfg.max_new_tokens,
                      "temperature": trainer.eval_cfg.temperature},
                     eval_file(exp.run.workdir, step))
    return {f"eval/{k}": v for k, v in result.items() if isinstance(v, float)}


def at_step(trainer, step: int, *, missing_only: bool = False) -> dict[str, float]:
    """The held-out evaluation and the export due at ``step`` (with ``missing_only``, only those
    whose files are not there yet); returns the evaluation's metrics."""
    exp, last, work = trainer.exp, trainer.exp.run.steps, trainer.exp.run.workdir
    metrics = {}
    span = exp.loop.updates
    if trainer.eval_examples and due(exp.eval.every, step, last, span) and not (
            missing_only and on_lead(os.path.exists(eval_file(work, step)))):
        metrics = record(trainer, step, trainer.evaluate_heldout())
    c = exp.ckpt
    if ((c.export and step == last) or (c.export_every and due(c.export_every, step, -1, span))) and not (
            missing_only and on_lead(os.path.isdir(export_dir(work, step)))):
        trainer.export()
    return metrics


def export_student(trainer, path: str, dtype: str | None = None) -> str:
    """Write ``trainer``'s student as it is now to ``path`` as a Hugging Face checkpoint
    (replacing one there); every process calls it."""
    exp, params = trainer.exp, trainer.state.params
    several = jax.process_count() > 1
    if several:
        params = X.gather(params)
    if jax.process_index() == 0:
        X.export(trainer.s_graph, path, params=params, tokenizer=trainer.tokenizer,
                 eos_ids=exp.sampler.eos_ids, source=exp.student.path or None, dtype=dtype,
                 overwrite=True)
    if several:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"export {path}")
    return path
