"""A student with low-rank adapters (``student.lora_rank``): only the adapters train, the
optimizer holds moments for them alone, OPD still learns, the run resumes exactly and exports
the merged student with its adapters beside it."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

import opd_jax.objectives as O
from opd_jax.models import from_pretrained, lora
from opd_jax.training.config import ModelSpec, TeacherSpec
from opd_jax.training.flops import update_flops
from opd_jax.training.loop import Trainer, evaluate
from opd_jax.sampling.sampler import model_config
from opd_jax.teachers.local import sequence_logp
from opd_jax.training.step import trainable

from cli_helpers import EXPERIMENT, assert_bitwise_equal, check_ok, digest, read_tree, run_cli
from test_loop import experiment, sharpen_teacher


def lora_experiment(tmp_path, rank=4, steps=150, lr=2e-2):
    """OPD with a rank-``rank`` student whose teacher is the student's own base model."""
    exp = experiment(tmp_path, O.OPDConfig(), steps=steps, lr=lr)
    return dataclasses.replace(exp, student=dataclasses.replace(exp.student, lora_rank=rank, lora_alpha=2.0 * rank),
                               teacher=TeacherSpec(kind="model", model=exp.student))


def within_reach(trainer, rank=4, seed=0):
    """Make the teacher its base weights plus a random rank-``rank`` update of every projection
    (a target an adapter of that rank can reach exactly), and both models' output sharper (the
    final norm x 10: the tiny random models are otherwise near uniform, and the norm is frozen
    under the adapters)."""
    rng = np.random.default_rng(seed)

    def shift(path, x):
        name = jax.tree_util.keystr(path)
        for t in lora.TARGETS:
            if f"['layers']['{t}']" in name:
                n_in = lora.INPUT_AXES.get(t, 1)
                fan_in, fan_out = int(np.prod(x.shape[1:1 + n_in])), int(np.prod(x.shape[1 + n_in:]))
                u = rng.normal(size=(x.shape[0], fan_in, rank)) / np.sqrt(fan_in)
                return x + (u @ rng.normal(size=(x.shape[0], rank, fan_out))).reshape(x.shape).astype(x.dtype)
        return x
    trainer.teacher.params = jax.tree_util.tree_map_with_path(shift, trainer.teacher.params)
    sharpen_teacher(trainer)
    sharp = lambda path, x: x * 10.0 if "final_norm" in jax.tree_util.keystr(path) else x  # noqa: E731
    trainer.state = trainer.state.replace(params=jax.tree_util.tree_map_with_path(sharp, trainer.state.params))


def flat(params) -> dict:
    return {"/".join(map(str, path)): np.asarray(v.get_value()) for path, v in nnx.to_flat_state(params)}


def test_only_the_adapters_train_and_they_reach_a_low_rank_teacher(tmp_path):
    trainer = Trainer(lora_experiment(tmp_path))
    (tmp_path / "plain").mkdir()
    plain = Trainer(experiment(tmp_path / "plain", O.OPDConfig(), steps=1, lr=1e-3))
    base = flat(plain.state.params)
    start = flat(trainer.state.params)
    adapters = {k for k in start if "/lora_" in k}
    assert len(adapters) == 2 * len(lora.TARGETS) and set(start) - adapters == set(base)
    for k in base:  # adapters do not change the weights a seed draws
        np.testing.assert_array_equal(start[k], base[k], err_msg=k)
    trained, _ = trainable(trainer.state.params)
    n_trained = sum(x.size for x in jax.tree.leaves(trained))
    moments = sum(x.size for x in jax.tree.leaves(trainer.state.opt_state) if x.ndim)
    assert moments == 2 * n_trained, (moments, n_trained)  # AdamW's two moments, adapters only
    within_reach(trainer)
    start = flat(trainer.state.params)
    before = evaluate(trainer)
    trainer.run()
    after = evaluate(trainer)
    end = flat(trainer.state.params)
    for k in set(start) - adapters:
        np.testing.assert_array_equal(end[k], start[k], err_msg=k)  # bit for bit: never updated
    assert all(np.any(end[k] != start[k]) for k in adapters)
    # 150 steps cut the reverse KL 3.5x here (0.99 -> 0.28; training every weight: 4.3x); asked: 2x
    assert before["eval/reverse_kl"] > 0.5 and after["eval/reverse_kl"] * 2 < before["eval/reverse_kl"], (
        before, after)


def base_weights(*sets) -> dict:
    """The CLI experiment's student without adapters, built in this process: its frozen base."""
    from opd_jax.config import apply_overrides, load_module
    from opd_jax.sharding import make_mesh
    from opd_jax.training.build import build_model
    exp = apply_overrides(load_module(EXPERIMENT.split(":")[0]).get_config("smoke"), list(sets))
    _, params, _ = build_model(exp.student, make_mesh(devices=jax.devices()[:1]))
    return params


def test_adapters_resume_bitwise_from_checkpoints_without_the_base_and_export_merged(tmp_path):
    sets = ["student.lora_rank=4", "student.lora_alpha=8", "student.lora_targets=q,v,down", "ckpt.every=1",
            "ckpt.keep=5"]
    ref, work = tmp_path / "uninterrupted", tmp_path / "resumed"
    check_ok(run_cli(ref, *sets, "run.steps=4"))
    check_ok(run_cli(work, *sets, "run.steps=2"))
    check_ok(run_cli(work, *sets, "run.steps=4"))
    for step in (2, 4):
        assert_bitwise_equal(read_tree(work / "checkpoints" / str(step) / "state"),
                             read_tree(ref / "checkpoints" / str(step) / "state"))
    # a checkpoint holds the adapters (and their moments), never the frozen base weights
    state = read_tree(ref / "checkpoints" / "4" / "state")
    adapters = sorted(n for t in ("q", "v", "down") for n in lora.factor_names(t))
    assert list(state["params"]) == ["layers"] and sorted(state["params"]["layers"]) == adapters
    record = json.loads((ref / "checkpoints" / "4" / "meta" / "metadata").read_text())
    base = flat(base_weights())
    assert sorted(record["frozen_base"]) == sorted(base)
    for name, (n, squares, _, absolute) in record["frozen_base"].items():
        x = base[name].astype(np.float64)
        assert n == x.size and squares == pytest.approx(np.sum(x * x), rel=1e-5), name
        assert absolute == pytest.approx(np.sum(np.abs(x)), rel=1e-5), name
    merged = ref / "hf" / "step_4"
    assert json.loads((merged / "adapter" / "adapter_config.json").read_text())["r"] == 4
    assert "lora" not in (merged / "config.json").read_text()
    # the merged weights are W + (alpha / r) A B of the last state (NumPy), the others W itself
    layers, written = state["params"]["layers"], from_pretrained(merged).layers
    for name in ("q", "v", "down", "k", "up"):
        w = base[f"layers/{name}"]
        if name in ("q", "v", "down"):
            a, b = (layers[f]["value"] if isinstance(layers[f], dict) else layers[f] for f in lora.factor_names(name))
            a2 = a.reshape(a.shape[0], -1, a.shape[-1])
            w = w + (8 / 4) * np.matmul(a2, b.reshape(b.shape[0], b.shape[1], -1)).reshape(w.shape)
        np.testing.assert_allclose(np.asarray(getattr(written, name)[...]), w, atol=1e-6, rtol=0, err_msg=name)
    # other base weights under the saved adapters (another seed): refused before anything is restored
    before = digest(work / "checkpoints")
    proc = run_cli(work, *sets, "run.steps=6", "student.seed=7", "run.allow_config_change=true")
    assert proc.returncode != 0 and "trained on other base weights" in proc.stderr, proc.stderr[-3000:]
    assert "layers/embed" in proc.stderr or "embed" in proc.stderr
    assert digest(work / "checkpoints") == before


def test_flops_of_an_adapted_update_leave_out_the_frozen_weight_gradients():
    from opd_jax.models import tiny_config
    cfg = tiny_config(vocab_size=128)
    full = update_flops(cfg, None, rows=4, seq_len=16, completion_len=8)
    adapted = cfg.replace(lora_rank=2, lora_targets=("q",))
    D, N, H, L = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.num_layers
    tokens, attention = 4 * 16, 4 * 16 * L * 4 * N * H * 16
    weights = tokens * L * (2 * D * (N * H + 2 * cfg.num_kv_heads * H) + 2 * N * H * D + 6 * D * cfg.intermediate_size)
    adapter = tokens * L * 2 * 2 * (D + N * H)
    head = 4 * 8 * 2 * D * cfg.vocab_size
    assert full == 3 * (weights + attention) + 3 * head
    assert update_flops(adapted, None, rows=4, seq_len=16, completion_len=8) == (
        2 * weights + 3 * (attention + adapter) + 2 * head)


def test_adapters_are_refused_on_a_teacher_and_in_a_config():
    from opd_jax.models import tiny_config
    with pytest.raises(ValueError, match="adapters belong on the student"):
        TeacherSpec(kind="model", model=ModelSpec(config=tiny_config(), lora_rank=4))
    with pytest.raises(ValueError, match="lora_targets"):
        ModelSpec(config=tiny_config(), lora_rank=4, lora_targets=("qkv",))
    with pytest.raises(ValueError, match="lora_rank"):
        ModelSpec(config=tiny_config(), lora_rank=-2)
    with pytest.raises(ValueError, match="on the model spec"):
        ModelSpec(config=tiny_config(lora_rank=2, lora_targets=("q",)))


def test_the_base_fingerprint_survives_another_sharding_and_catches_small_changes():
    from jax.sharding import NamedSharding, PartitionSpec as P
    from opd_jax.sharding import make_mesh
    from opd_jax.training.checkpoint import check_base, fingerprint
    rng = np.random.default_rng(0)
    base = nnx.State({"embed": nnx.Param(rng.normal(size=(512, 64)).astype(np.float32)),
                      "layers": {"up": nnx.Param(rng.normal(size=(2, 64, 256)).astype(np.float32))}})
    saved = fingerprint(base)
    # NumPy oracle: counts, squares and absolute sums in float64
    for name, x in (("embed", base["embed"].get_value()), ("layers/up", base["layers"]["up"].get_value())):
        n, squares, _, absolute = saved[name]
        assert n == x.size and squares == pytest.approx(np.sum(np.float64(x) ** 2), rel=1e-6)
        assert absolute == pytest.approx(np.sum(np.abs(np.float64(x))), rel=1e-6)
    # the same weights split over 8 devices (summed in another order): accepted
    mesh = make_mesh(data=8)
    spread = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P(*[None] * (x.ndim - 1), "data"))), base)
    check_base(saved, fingerprint(spread), "here")

    def changed(fn):
        out = jax.tree.map(lambda x: x, base)
        out["layers"]["up"] = nnx.Param(fn(base["layers"]["up"].get_value()))
        return fingerprint(out)
    for fn in (lambda x: x * 1.003,  # scaled by 0.3%
               lambda x: x + 0.003 * rng.normal(size=x.shape).astype(np.float32),  # 0.3% noise
               lambda x: x[:, ::-1].copy(),  # the same values, rows reordered
               lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, x + 1.0, x)):  # one element
        with pytest.raises(ValueError, match="these tensors differ: layers/up"):
            check_base(saved, changed(fn), "here")


@pytest.mark.parametrize("kind", ["initial", "ema"])
def test_copies_of_an_adapted_student_hold_its_adapters_and_read_its_base(tmp_path, kind):
    """The initial or EMA teacher, and StableOPD's reference, of a student with adapters copy the
    adapters alone, and score with the student's frozen weights beside them as the whole copy
    would (against independent forwards of NumPy-built weights)."""
    from test_reference import batch, independent_logp
    from opd_jax.sharding import make_mesh
    from opd_jax.teachers import WithReference
    from opd_jax.training.build import build_model
    exp = experiment(tmp_path, O.StableOPDConfig(ref_coef=0.5), steps=3, lr=5e-2, samples=4,
                     teacher=TeacherSpec(kind=kind, ema_decay=0.5, ema_every=1))
    exp = dataclasses.replace(exp, student=dataclasses.replace(exp.student, lora_rank=2, lora_alpha=4.0))
    trainer = Trainer(exp)
    assert isinstance(trainer.teacher, WithReference)
    teacher, start = trainer.teacher.inner, flat(trainable(trainer.state.params)[0])
    for copy in (teacher.params, trainer.teacher.ref_params):  # nothing held twice
        assert sorted(flat(copy)) == sorted(start)
    ema = dict(start)
    for _ in range(3):
        trainer.iteration()
        now = flat(trainable(trainer.state.params)[0])
        ema = {k: 0.5 * ema[k] + 0.5 * now[k] for k in ema}
    assert all(np.any(now[k] != start[k]) for k in now)  # the student's adapters moved
    want = ema if kind == "ema" else start
    for k, v in flat(teacher.params).items():
        np.testing.assert_allclose(v, want[k], rtol=1e-6, atol=1e-7, err_msg=k)

    base_graph, base_params, _ = build_model(dataclasses.replace(exp.student, lora_rank=0),
                                             make_mesh(devices=jax.devices()[:1]))
    base = flat(base_params)
    g, whole = teacher.model(trainer.state.params)
    assert sorted(flat(whole)) == sorted(flat(trainer.state.params))
    for k, v in base.items():  # the student's frozen weights, as a model without adapters has them
        np.testing.assert_array_equal(flat(whole)[k], v, err_msg=k)
    tb = batch()
    m = np.asarray(tb.loss_mask)

    def logp(params):
        return np.asarray(sequence_logp(g, params, tb.student, tb.targets, tb.loss_mask, 1, 1.0, 256))[m]
    # the teacher: its adapters (NumPy's EMA, or the initial ones) on the base weights
    oracle = nnx.from_flat_state({tuple(k.split("/")): v for k, v in {**base, **want}.items()})
    np.testing.assert_allclose(logp(whole), np.asarray(independent_logp(g, oracle, tb))[m], rtol=1e-5, atol=1e-5)
    # the reference: the initial student, whose adapters add nothing yet (B = 0): the base model
    ref = np.asarray(trainer.teacher.reference_logp(tb, trainer.state.params))[m]
    np.testing.assert_allclose(ref, np.asarray(independent_logp(base_graph, base_params, tb))[m],
                               rtol=1e-5, atol=1e-5)
    # a checkpoint holds the copies' adapters (no base weights anywhere), and restores them
    trainer.save()
    trainer.ckpt.wait()
    saved = tmp_path / "run" / "checkpoints" / "3"
    for item in ("teacher", "reference"):
        assert sorted(flat_tree(read_tree(saved / item))) == sorted(start), item
    resumed = Trainer(exp)
    assert resumed.restore()
    assert_bitwise_equal(flat(resumed.teacher.inner.params), flat(teacher.params))
    assert_bitwise_equal(flat(resumed.teacher.ref_params), flat(trainer.teacher.ref_params))


def flat_tree(tree, prefix="") -> dict:
    """A restored checkpoint item's leaves by path (an nnx value's ``{"value": x}`` as ``x``)."""
    if isinstance(tree, dict) and set(tree) != {"value"}:
        return {k: v for name, sub in tree.items() for k, v in flat_tree(sub, f"{prefix}{name}/").items()}
    return {prefix.rstrip("/"): tree["value"] if isinstance(tree, dict) else tree}


def test_a_run_starts_from_saved_adapters(tmp_path):
    """``student.lora_path``: the adapters start as the PEFT directory holds them (rank, alpha
    and targets from its config), bit for bit; settings that say otherwise, a directory without
    adapters and adapters on a teacher are refused before any model is built."""
    from opd_jax.models.lora_io import save_adapter
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = Trainer(lora_experiment(tmp_path / "a", rank=2, steps=1))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(  # adapters as training leaves them: B != 0
        lambda path, x: x + rng.normal(size=x.shape).astype(x.dtype) if "lora_b_" in jax.tree_util.keystr(path)
        else x, first.state.params)
    save_adapter(nnx.merge(first.s_graph, params), tmp_path / "adapter")
    exp = experiment(tmp_path / "b", O.OPDConfig(), steps=1, lr=1e-3)
    spec = dataclasses.replace(exp.student, lora_path=str(tmp_path / "adapter"))
    second = Trainer(dataclasses.replace(exp, student=spec))
    assert_bitwise_equal(flat(trainable(second.state.params)[0]), flat(trainable(params)[0]))
    assert model_config(second.s_graph, second.state.params).lora_alpha == 4.0  # rank 2, alpha 2 x 2
    assert np.isfinite(second.iteration()["loss/total"])
    with pytest.raises(ValueError, match=r"lora_rank=8 \(the adapters': 2\)"):
        Trainer(dataclasses.replace(exp, student=dataclasses.replace(spec, lora_rank=8)))
    with pytest.raises(FileNotFoundError, match="no PEFT adapter here"):
        Trainer(dataclasses.replace(exp, student=dataclasses.replace(spec, lora_path=str(tmp_path))))
    with pytest.raises(ValueError, match="adapters belong on the student"):
        TeacherSpec(kind="model", model=spec)


def test_a_checkpoint_of_the_whole_adapted_state_still_restores(tmp_path):
    """A LoRA run's checkpoint written before checkpoints left the base out (the whole state, no
    fingerprint in its record) restores as it was saved."""
    from opd_jax.config import to_dict
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    exp = lora_experiment(tmp_path / "a", rank=2, steps=1)
    old = Trainer(exp)
    moved = jax.tree.map(lambda x: x + 0.5, old.state.params)  # every weight differs from a fresh build's
    old.state = old.state.replace(params=moved)
    old.ckpt.save(0, {"state": old.state, **old.teacher.checkpoint_items()}, {"step": 0, "config": to_dict(exp)})
    old.ckpt.wait()
    new = Trainer(exp)
    assert new.restore(0)
    assert_bitwise_equal(flat(new.state.params), flat(moved))
