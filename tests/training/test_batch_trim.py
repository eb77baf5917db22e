"""What the trainer saves on each batch changes no number it computes: cutting padding columns
(``loop.completion_slices``), running a prompt once for all its samples (``TrainBatch.group``),
the data stream's order and prompt widths found once instead of per step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opd_jax.objectives as O
from opd_jax import data as D
from opd_jax.models import Transformer, tiny_config
from opd_jax.training import batches as B
from opd_jax.training.batch import Sequences, completion_hidden
from opd_jax.training.config import LoopConfig, TeacherSpec
from opd_jax.training.loop import Trainer
from tests.training.test_loop import experiment


def test_global_indices_follow_each_epochs_permutation():
    n, seed = 7, 3
    for cursor in (0, 5, 13, 20):
        want = [D.order(n, seed, c // n)[c % n] for c in range(cursor, cursor + 17)]
        np.testing.assert_array_equal(D.global_indices(n, seed, cursor, 17), want)


def test_prompt_widths_given_or_found_give_the_same_prompts():
    ex = [D.Example((3, 4), None, None, None, 1, {}), D.Example((5, 6, 7, 8), (1, 5), None, None,
                                                                2, {})]
    assert B.prompt_widths(ex) == (4, 2)
    assert B.prompt_widths(ex[:1]) == (2, None)
    a = B.prompts_at(ex, 1, batch_size=2, shuffle_seed=0, pad_id=0)
    b = B.prompts_at(ex, 1, batch_size=2, shuffle_seed=0, pad_id=0, widths=B.prompt_widths(ex))
    for x, y in ((a.tokens, b.tokens), (a.mask, b.mask), (a.teacher_tokens, b.teacher_tokens)):
        np.testing.assert_array_equal(x, y)


def test_completion_width_is_the_smallest_slice_that_holds_the_longest():
    for width in (1, 5, 16, 32, 33):
        for slices in (1, 2, 3, 8, 40):
            allowed = sorted({-(-width * j // slices) for j in range(1, slices + 1)})
            for longest in range(width + 1):
                w = B.completion_width(longest, width, slices)
                assert w in allowed and w >= longest
                assert all(a < longest for a in allowed if a < w)
            assert B.completion_width(width, width, slices) == width
            assert len({B.completion_width(n, width, slices) for n in range(width + 1)}) <= slices


def _run(tmp_path, objective, slices, **kw):
    loop = kw.pop("loop", LoopConfig(lmbda=1.0))
    (tmp_path / str(slices)).mkdir()
    exp = experiment(tmp_path / str(slices), objective, steps=3, lr=1e-2, samples=2,
                     loop=dataclasses.replace(loop, completion_slices=slices), **kw)
    trainer = Trainer(exp)
    metrics = [trainer.iteration() for _ in range(3)]
    return trainer, metrics


@pytest.mark.parametrize("objective,kw", [
    (O.OPDConfig(), {}),  # sampled-token reverse KL on the student's samples
    (O.GKDConfig(beta=0.5), dict(loop=LoopConfig(lmbda=0.0),  # JSD on the data's completions
                                 data_kw=dict(completions=True))),
    (O.IWOPDConfig(), {}),  # importance weights over positions
    (O.PWOPSDConfig(), dict(teacher=TeacherSpec(kind="self"),  # position weights, privileged
                            data_kw=dict(teacher_prompts=True))),
], ids=["opd", "gkd-data", "iwopd", "pwopsd"])
def test_cut_batches_train_exactly_as_whole_ones(tmp_path, objective, kw):
    whole, m_whole = _run(tmp_path, objective, 1, **dict(kw))
    cut, m_cut = _run(tmp_path, objective, 8, **dict(kw))
    # the cut run read fewer columns (the buffer holds 16, no completion is longer than 8)...
    assert all(a["flops/update"] < b["flops/update"] for a, b in zip(m_cut, m_whole))
    # ...and computed the same losses and the same weights. The first step's losses come from the
    # same weights (rounding only: ~5e-7 relative); later ones from weights that rounding has moved
    # through Adam (below), 2.5e-5 / 3.8e-5 relative at steps 2 / 3 on an AVX2 CPU. A wrong column
    # would move a loss by percents.
    for i, (a, b) in enumerate(zip(m_cut, m_whole)):
        for k in b:
            if k.startswith("loss/"):
                np.testing.assert_allclose(a[k], b[k], rtol=2e-5 if i == 0 else 2e-4, atol=1e-6,
                                           err_msg=f"{k} at step {i + 1}")
    # (Adam steps of lr 1e-2: a bug moves weights by ~1e-2. Rounding moves most by ~1e-5, but Adam
    # divides each gradient by its own scale, so a near-zero gradient element can move by more:
    # 5.7e-5 on one of 2,048 elements on an AVX-512 CPU. Hence lr / 20.)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=5e-4),
                 jax.device_get(cut.state.params), jax.device_get(whole.state.params))


def test_completion_slices_must_be_a_positive_int():
    with pytest.raises(ValueError, match="completion_slices"):
        LoopConfig(completion_slices=0)


def _grouped_batch(rng, prompts=3, group=4, p=6, n=5, vocab=32):
    """Rows in groups of ``group`` with one left-padded prompt each, completions of any length."""
    tok, mask = np.zeros((prompts * group, p + n), np.int32), np.zeros((prompts * group, p + n), bool)
    for i in range(prompts):
        lp = rng.integers(1, p + 1)
        prompt = rng.integers(2, vocab, lp)
        for j in range(group):
            r, lc = i * group + j, rng.integers(1, n + 1)
            tok[r, p - lp:p], mask[r, p - lp:p] = prompt, True
            tok[r, p:p + lc], mask[r, p:p + lc] = rng.integers(2, vocab, lc), True
    return Sequences.from_left_padded(jnp.asarray(tok), jnp.asarray(mask))


@pytest.mark.parametrize("n", [1, 5])
def test_shared_prompts_give_the_whole_sequence_hidden_states_and_gradients(n):
    from flax import nnx
    rng = np.random.default_rng(0)
    seq = _grouped_batch(rng, n=n)
    model = Transformer(tiny_config(vocab_size=32, hidden_size=32, num_layers=2), rngs=nnx.Rngs(0))
    graph, params = nnx.split(model)
    valid = seq.mask[:, -n - 1:-1, None]  # positions whose hidden state predicts a real token
    probe = jnp.asarray(rng.normal(size=(seq.tokens.shape[0], n, 32)), jnp.float32)

    def loss(p, group):
        h = completion_hidden(nnx.merge(graph, p), seq, n, group)
        return jnp.sum(jnp.where(valid, h * probe, 0.0)), h
    # jitted: op by op, the two passes took ~35 s of small compiles
    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (l1, h1), g1 = grad(params, 1)
    (l4, h4), g4 = grad(params, 4)
    np.testing.assert_allclose(np.where(valid, h4, 0), np.where(valid, h1, 0), atol=2e-5)
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g4, g1)
    # a group that does not divide the rows falls back to the whole-sequence forward
    forward = jax.jit(lambda p, group: completion_hidden(nnx.merge(graph, p), seq, n, group), static_argnums=1)
    np.testing.assert_array_equal(forward(params, 5), forward(params, 1))


def test_a_sampled_batch_knows_its_groups_and_scores_as_an_ungrouped_one(tmp_path):
    trainer = Trainer(experiment(tmp_path, O.OPDConfig(), steps=1, lr=1e-2, samples=4))
    prepared = trainer._prepare(0, 0)
    grouped = prepared.finish()
    assert grouped.group == 4
    plain = trainer.teacher.score(grouped.replace(group=1, teacher_hidden=None),
                                  trainer.prompts(0), trainer.state.params)
    valid = np.asarray(grouped.loss_mask)[..., None]
    np.testing.assert_allclose(np.where(valid, grouped.teacher_hidden, 0),
                               np.where(valid, plain.teacher_hidden, 0), atol=2e-5)
