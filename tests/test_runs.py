"""Run directories: saving and loading a model, whole-or-nothing writes, clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptclassifier.errors import DataError, GptClassifierError
from gptclassifier.finetune import add_classification_head, set_trainable
from gptclassifier.model import GPTModel, model_config
from gptclassifier.runs import load_run, run_writer, save_model

CONFIG = {
    "model": model_config("gpt2-nano"),
    "classes": ["ham", "spam"],
    "max_length": 20,
    "precision": "float32",
    "training": {"trainable": "last_block"},
}


@pytest.fixture
def classifier():
    """Return a tiny GPT with a two-class head."""
    torch.manual_seed(0)
    return add_classification_head(GPTModel(CONFIG["model"]), 2).eval()


@pytest.fixture
def saved_run(tmp_path, classifier):
    """Return the path of a saved run of the tiny classifier."""
    run = tmp_path / "run"
    run.mkdir()
    save_model(run, classifier, CONFIG)
    return run


def test_save_then_load_gives_identical_logits(saved_run, classifier):
    tokens = torch.randint(0, 50257, (3, 20))
    model, config = load_run(saved_run)
    assert config == json.loads(json.dumps(CONFIG))
    with torch.no_grad():
        assert torch.equal(model(tokens), classifier(tokens))
    assert not model.training


def test_a_loaded_run_is_frozen_and_computes_as_in_training(tmp_path, classifier):
    trained = set_trainable(classifier, "last_block")
    for precision, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        run = tmp_path / precision
        run.mkdir()
        save_model(run, trained.to(dtype), {**CONFIG, "precision": precision})
        model, _ = load_run(run)
        assert next(model.parameters()).dtype == dtype
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {
            n for n, p in trained.named_parameters() if p.requires_grad
        }
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, trained.state_dict()[name]), name


def test_the_saved_files_are_safetensors_and_json_only(saved_run):
    assert sorted(path.name for path in saved_run.iterdir()) == ["config.json", "model.safetensors"]
    assert load_file(saved_run / "model.safetensors")["out_head.weight"].shape == (2, 48)


def test_missing_or_incomplete_runs_are_named(tmp_path, saved_run):
    with pytest.raises(DataError, match="no such run directory"):
        load_run(tmp_path / "nothing")
    (saved_run / "model.safetensors").unlink()
    with pytest.raises(DataError, match="incomplete run, model.safetensors missing"):
        load_run(saved_run)


def test_a_wrong_number_of_classes_is_explained(saved_run):
    config = json.loads((saved_run / "config.json").read_text())
    config["classes"] = ["a", "b", "c"]
    (saved_run / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="2 classes in the weights, 3 in config.json"):
        load_run(saved_run)


def test_a_wrong_shape_or_missing_tensor_is_named(saved_run):
    state = load_file(saved_run / "model.safetensors")
    state["trf_blocks.0.norm1.scale"] = torch.ones(7)
    save_file(state, saved_run / "model.safetensors")
    with pytest.raises(
        DataError, match=r"trf_blocks.0.norm1.scale has shape \(7,\), expected \(48,\)"
    ):
        load_run(saved_run)
    del state["trf_blocks.0.norm1.scale"]
    save_file(state, saved_run / "model.safetensors")
    with pytest.raises(DataError, match="missing trf_blocks.0.norm1.scale"):
        load_run(saved_run)


def test_unreadable_files_are_data_errors(saved_run):
    (saved_run / "config.json").write_text("{not json")
    with pytest.raises(DataError, match="not a gptclassifier run configuration"):
        load_run(saved_run)
    (saved_run / "config.json").write_text(json.dumps(CONFIG))
    (saved_run / "model.safetensors").write_bytes(b"\x80\x04pickle, not safetensors")
    with pytest.raises(DataError, match="cannot read it"):
        load_run(saved_run)


def test_run_writer_refuses_an_existing_directory_without_force(tmp_path):
    (tmp_path / "run").mkdir()
    refused = pytest.raises(GptClassifierError, match="already exists: .* add --force")
    with refused, run_writer(tmp_path / "run"):
        pass


def test_run_writer_replaces_only_after_success(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "old.txt").write_text("earlier run")
    with pytest.raises(KeyboardInterrupt), run_writer(run, force=True) as staging:
        (staging / "new.txt").write_text("half done")
        raise KeyboardInterrupt
    assert [path.name for path in tmp_path.iterdir()] == ["run"]
    assert [path.name for path in run.iterdir()] == ["old.txt"]

    with run_writer(run, force=True) as staging:
        (staging / "new.txt").write_text("complete")
    assert [path.name for path in tmp_path.iterdir()] == ["run"]
    assert [path.name for path in run.iterdir()] == ["new.txt"]
