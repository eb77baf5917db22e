"""The lab's model zoo: a smoke-sized build through the same code as the shipped models, and every
shipped model (``lab/models/<name>``) checked against its manifest (data hash, greedy pass@1,
which is deterministic on a CPU)."""

import json
import os

import pytest

from opd_jax.lab import zoo

SHIPPED = sorted(n for n in (os.listdir(zoo.MODELS) if os.path.isdir(zoo.MODELS) else [])
                 if os.path.exists(os.path.join(zoo.MODELS, n, "manifest.json")))


def test_smoke_build_writes_a_checkpoint_with_its_manifest_and_is_reused(tmp_path, monkeypatch):
    setting = zoo.SETTINGS["smoke"]
    models, data = str(tmp_path / "models"), str(tmp_path / "data")
    manifest = zoo.build("teacher", setting, models=models, data_dir=data,
                         workdir=str(tmp_path / "zoo"), log=None)
    out = os.path.join(models, "teacher")
    assert json.load(open(os.path.join(out, "manifest.json"))) == json.loads(json.dumps(manifest))
    assert os.path.exists(os.path.join(out, "config.json")) and not os.path.exists(out + ".tmp")
    assert manifest["command"] == "python -m opd_jax.lab.zoo build teacher --setting smoke"
    assert manifest["recipe"]["steps"] == setting.recipes["teacher"].steps
    assert manifest["data"]["train_sha256"] == zoo.sha256(os.path.join(data, "train.jsonl"))
    assert manifest["eval"]["problems"] == setting.eval_problems
    # The check re-evaluates the written model: the same numbers (greedy is deterministic).
    rows = zoo.check("teacher", models=models, data_dir=data)
    assert rows["greedy_pass@1"][0] == rows["greedy_pass@1"][1]
    # A second build finds the model and trains nothing.
    import opd_jax.training.loop as L
    monkeypatch.setattr(L, "Trainer", lambda *a, **k: pytest.fail("a built model was trained again"))
    assert zoo.build("teacher", setting, models=models, data_dir=data, log=None) == manifest


def test_the_zoo_refuses_an_unknown_model(tmp_path):
    with pytest.raises(ValueError, match="unknown lab model 'giant'"):
        zoo.build("giant", zoo.SETTINGS["smoke"], models=str(tmp_path), data_dir=str(tmp_path / "d"))


@pytest.fixture(scope="module")
def shipped_data(tmp_path_factory):
    """The data directories the shipped models were trained on, rebuilt (deterministic)."""
    root, built = tmp_path_factory.mktemp("zoo_data"), {}

    def get(setting_name):
        if setting_name not in built:
            path = str(root / setting_name)
            zoo.ensure_data(path, zoo.SETTINGS[setting_name].data)
            built[setting_name] = path
        return built[setting_name]
    return get


@pytest.mark.skipif(not SHIPPED, reason="no lab model is shipped in lab/models yet")
@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_matches_its_manifest(name, shipped_data):
    from opd_jax.lab import variants
    manifest = json.load(open(os.path.join(zoo.MODELS, name, "manifest.json")))
    setting = manifest["command"].split("--setting ")[-1].split()[0]
    data = shipped_data(setting)
    records = manifest["recipe"].get("records", "train.jsonl")
    variants.ensure(data, records)
    assert zoo.sha256(os.path.join(data, records)) == manifest["data"]["train_sha256"], \
        "the data this model was trained on no longer rebuilds the same: rebuild the model"
    want = manifest["eval"]
    now = zoo.evaluate_model(os.path.join(zoo.MODELS, name), data, want["problems"], 1,
                             zoo.eval_records(records))
    assert now["greedy_pass@1"] == want["greedy_pass@1"]
