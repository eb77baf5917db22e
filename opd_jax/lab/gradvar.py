"""The variance of two gradient estimators of the same expected gradient, at fixed parameters.

vOPD (arXiv 2605.07865) claims that its closed-form baseline, ``A_t = r_t + KL(p_t || q_t)``,
lowers the variance of the sampled-token OPD gradient (``A_t = r_t``, Tinker's estimator)
without changing its expectation: the baseline depends on the prefix only. This module measures
both at the student as it is: ``S`` independent batches of the same prompts (the run's first
``prompts`` training prompts in its data order, ``samples`` completions each, drawn with ``S``
different keys), each estimator's gradient of the training loss on every batch, through the
project's own train step (``opd_jax.training.step``) with the objectives as configured, and an
"optimizer" that keeps the gradient instead of applying it (:func:`capture`).

Reported by ``grad_variance:S`` (:mod:`opd_jax.lab.measures`):

- ``grad_variance/opd``, ``/vopd``: the total variance over batches, ``sum_i Var_s(g_s[i])``
  (sample variance, every parameter ``i``);
- ``grad_variance/log_ratio``: ``log(var_vopd / var_opd)`` (< 0: the baseline lowers it);
- ``grad_variance/mean_gap``: ``||mean_s d_s||^2 / (tr Var(d) / S)`` for ``d_s`` = the two
  gradients' difference on batch ``s``: about 1 when the two expectations agree (the mean
  difference is then noise of that size), large when they differ;
- ``grad_variance/norm_opd``, ``/norm_vopd``: the norms of the mean gradients.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import opd_jax.objectives as O
from opd_jax.lab.tokenizer import EOS_ID, PAD_ID
from opd_jax.sampling import SamplerConfig, sample
from opd_jax.training import batches as B
from opd_jax.training.step import StepConfig, init_state, make_train_step

ESTIMATORS = {"opd": O.OPDConfig(), "vopd": O.VOPDConfig()}


def capture() -> optax.GradientTransformation:
    """An optimizer whose update is zero and whose state is the last gradient it was given."""
    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        return jax.tree.map(jnp.zeros_like, grads), grads
    return optax.GradientTransformation(init, update)


def batches(ctx, count: int) -> list:
    """``count`` batches of the same prompts, each sampled from the student with its own key."""
    if not ctx.train_examples:
        raise ValueError("grad_variance needs the run's training examples")
    mesh = ctx.mesh
    rows = B.Rows(mesh)
    prompts = B.prompts_at(list(ctx.train_examples), 0, batch_size=ctx.prompts, shuffle_seed=ctx.seed,
                           pad_id=PAD_ID)
    cfg = SamplerConfig(max_new_tokens=ctx.max_new_tokens, eos_ids=(EOS_ID,), pad_id=PAD_ID,
                        num_samples=ctx.samples)
    out = []
    for s in range(count):
        key = jax.random.fold_in(jax.random.key(ctx.seed), s)
        roll = sample(*ctx.student, rows.to_global(prompts.tokens), rows.to_global(prompts.mask), key,
                      cfg=cfg, row_ids=rows.to_global(prompts.row_ids))
        out.append(B.from_rollout(rows, prompts, roll, ctx.samples))
    return out


def gradients(student, teacher, batch_list, configs: dict, mesh=None) -> dict[str, np.ndarray]:
    """Per estimator (a name -> objective config), every batch's gradient of the loss at the
    student's parameters, flattened: ``{name: float64 [batches, parameters]}``."""
    graphdef, params = student
    t_graph, t_params = teacher
    tx = capture()
    out = {}
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        for name, cfg in configs.items():
            objective = O.build_objective(cfg)
            step = make_train_step(graphdef=graphdef, teacher_graphdef=t_graph, tx=tx, objective=objective,
                                   cfg=StepConfig())
            rows = []
            for batch in batch_list:
                # the step donates its state: give it a copy of the parameters
                state = init_state(jax.tree.map(jnp.copy, params), tx, objective, seed=0)
                new, _ = step(state, batch, t_params)
                leaves = jax.tree.leaves(jax.device_get(new.opt_state))
                rows.append(np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in leaves]))
            out[name] = np.stack(rows)
    return out


def statistics(grads: dict[str, np.ndarray], a: str = "opd", b: str = "vopd") -> dict[str, float]:
    """The module docstring's statistics of estimators ``a`` and ``b`` (``[S, P]`` each)."""
    ga, gb = grads[a], grads[b]
    if ga.shape != gb.shape or ga.shape[0] < 2:
        raise ValueError(f"need the same >= 2 batches of both estimators, got {ga.shape} and {gb.shape}")
    s = ga.shape[0]
    var = {n: float(np.sum(np.var(g, axis=0, ddof=1))) for n, g in ((a, ga), (b, gb))}
    d = ga - gb
    noise = float(np.sum(np.var(d, axis=0, ddof=1))) / s
    gap = float(np.sum(np.mean(d, axis=0) ** 2)) / noise if noise > 0 else float("nan")
    return {f"grad_variance/{a}": var[a], f"grad_variance/{b}": var[b],
            "grad_variance/log_ratio": float(np.log(var[b] / var[a])) if var[a] > 0 and var[b] > 0
            else float("nan"),
            "grad_variance/mean_gap": gap,
            f"grad_variance/norm_{a}": float(np.linalg.norm(ga.mean(0))),
            f"grad_variance/norm_{b}": float(np.linalg.norm(gb.mean(0)))}


def measure(ctx, count: int) -> dict[str, float]:
    """``grad_variance:count`` for the student of ``ctx`` against its teacher."""
    if ctx.teacher is None:
        raise ValueError("grad_variance compares estimators of the distillation gradient: the arm "
                         "needs a teacher model")
    return statistics(gradients(ctx.student, ctx.teacher, batches(ctx, count), ESTIMATORS, ctx.mesh))
