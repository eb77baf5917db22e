"""Token diagnostics of a student's samples against a teacher, for evaluation.

On the student's own completions, the exact per-token reverse KL ``KL(student || teacher)``, both
entropies (their gap says whether the student is sharper or flatter than its teacher), top-1
agreement and Rethinking-OPD's top-k overlap ratio, all from the objectives package's
diagnostic features (:func:`opd_jax.objectives.diagnostic_features`). The function returns
*sums* over valid tokens and the token count, so batches of any size combine into exact means.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

import opd_jax.objectives as O
from opd_jax.training.batch import Sequences, completion_hidden

# The diagnostic features evaluation reports (all token means over the same mask).
FEATURES = ("reverse_kl", "student_entropy", "teacher_entropy", "overlap_ratio", "top1_agree")


@functools.partial(jax.jit, static_argnames=("s_graph", "t_graph", "k", "temperature", "chunk", "group"))
def token_sums(s_graph, s_params, t_graph, t_params, s_seq: Sequences, t_seq: Sequences, targets,
               mask, *, k: int, temperature: float, chunk: int, group: int = 1) -> tuple[dict, jax.Array]:
    """``({feature: sum over valid completion tokens}, token count)``.

    ``s_seq``/``t_seq`` are what each model reads (a left-padded prompt, the teacher's possibly
    privileged, then the same completion in the last ``N`` columns); ``targets``/``mask`` the
    completion ``[R, N]``. ``group``: the rows come in groups of this many samples of one prompt,
    whose prompt each model then runs once (``completion_hidden``).
    """
    s, t = nnx.merge(s_graph, s_params), nnx.merge(t_graph, t_params)
    n = targets.shape[1]
    feats = {name: f for name, f in O.diagnostic_features(k=k, temperature=temperature).items()
             if name.removeprefix("diag/") in FEATURES}
    f = O.compute_features(feats, tokens=targets, mask=mask,
                           hidden=completion_hidden(s, s_seq, n, group), head=s.lm_head_weight(),
                           teacher_hidden=completion_hidden(t, t_seq, n, group),
                           teacher_head=t.lm_head_weight(), chunk_size=chunk)
    m = mask.astype(jnp.float32)
    sums = {name.removeprefix("diag/"): jnp.sum(v * m) for name, v in f.items()}
    gap = f["diag/teacher_entropy"] - f["diag/student_entropy"]
    sums["entropy_gap_abs"] = jnp.sum(jnp.abs(gap) * m)
    return sums, jnp.sum(m)


def means(sums: dict[str, float], tokens: float) -> dict[str, float]:
    """Token means of :func:`token_sums` accumulated over batches, and the signed entropy gap
    (teacher minus student, as the training diagnostics sign it; ``entropy_gap_abs`` is the mean
    of its absolute value per token)."""
    out = {name: v / max(tokens, 1.0) for name, v in sums.items()}
    out["entropy_gap"] = out["teacher_entropy"] - out["student_entropy"]
    return out
