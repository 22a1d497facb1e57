"""Run directories: what training changed, the base rebuilt and checked, whole-or-nothing writes."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptclassifier.errors import DataError, GptClassifierError
from gptclassifier.model.classifier import add_classification_head, count_parameters, set_trainable
from gptclassifier.model.gpt import GPTModel, model_config
from gptclassifier.model.weights import base_digest, load_base_model
from gptclassifier.runs import load_run, run_writer, save_model

CONFIG = {
    "model": model_config("gpt2-nano"),
    "classes": ["ham", "spam"],
    "max_length": 20,
    "pooling": "last",
    "precision": "float32",
    "training": {"trainable": "last_block", "model": "gpt2-nano"},
}


def fine_tuned(model: GPTModel) -> GPTModel:
    """Change what a classifier trains, as training would; return it in evaluation mode."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01 * torch.randn_like(parameter))
    return model.eval()


def edit_config(run, edit) -> None:
    """Change a saved run's config.json in place with `edit`, a function of the dict."""
    config = json.loads((run / "config.json").read_text())
    edit(config)
    (run / "config.json").write_text(json.dumps(config))


@pytest.fixture
def config() -> dict:
    """Return a run configuration whose base is gpt2-nano's random weights of seed 0.

    load_base_model seeds the generator with 0 and builds gpt2-nano, as nano_classifier(seed=0)
    does: that classifier's base is this one.
    """
    return CONFIG | {"provenance": {"weights": load_base_model("gpt2-nano", seed=0).provenance}}


@pytest.fixture
def classifier(nano_classifier):
    """Return a tiny GPT fine-tuned from the base that `config` names."""
    return fine_tuned(nano_classifier("last_block", seed=0))


@pytest.fixture
def saved_run(tmp_path, classifier, config):
    """Return the path of a saved run of the tiny classifier."""
    run = tmp_path / "run"
    run.mkdir()
    save_model(run, classifier, config)
    return run


def test_save_then_load_gives_identical_logits(saved_run, classifier, config):
    tokens = torch.randint(0, 50257, (3, 20))
    model, loaded = load_run(saved_run)
    assert loaded == json.loads(json.dumps(config | {"saved_parameters": "trained"}))
    with torch.no_grad():
        assert torch.equal(model(tokens), classifier(tokens))
    assert not model.training


def test_a_loaded_run_is_frozen_and_computes_as_in_training(tmp_path, classifier, config):
    for precision, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        run = tmp_path / precision
        run.mkdir()
        training = {**config["training"], "precision": precision}
        save_model(
            run, classifier.to(dtype), {**config, "precision": precision, "training": training}
        )
        model, _ = load_run(run)
        assert next(model.parameters()).dtype == dtype
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {
            n for n, p in classifier.named_parameters() if p.requires_grad
        }
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, classifier.state_dict()[name]), name


def test_the_run_keeps_only_what_training_changed(saved_run, classifier):
    assert sorted(path.name for path in saved_run.iterdir()) == ["config.json", "model.safetensors"]
    saved = load_file(saved_run / "model.safetensors")
    trained = {name for name, p in classifier.named_parameters() if p.requires_grad}
    assert set(saved) == trained and "trf_blocks.0.att.W_query.weight" not in saved
    assert saved["out_head.weight"].shape == (2, 48)


def test_the_chapters_run_folder_holds_28_mb_of_weights(tmp_path):
    torch.manual_seed(123)
    base = GPTModel(model_config("gpt2-small"))
    weights = {"source": "random", "seed": 123, "note": "", "digest": base_digest(base)}
    model = fine_tuned(set_trainable(add_classification_head(base, 2), "last_block"))
    _, trainable = count_parameters(model)
    assert trainable == 7_090_946  # the last block, the final norm and the two-way head
    save_model(tmp_path, model, {"provenance": {"weights": weights}})
    size = (tmp_path / "model.safetensors").stat().st_size
    assert 4 * trainable < size < 4 * trainable + 10_000  # float32 tensors and a small header


def test_a_run_refuses_a_base_other_than_its_own(saved_run):
    edit_config(saved_run, lambda config: config["provenance"]["weights"].update(seed=1))
    with pytest.raises(
        DataError,
        match=r"the base model found \(gpt2-nano with random weights "
        r"of seed 1\) is not the one it was trained on \(weights SHA-256 ",
    ):
        load_run(saved_run)


def test_a_run_whose_pretrained_base_cannot_be_had_says_so(saved_run):
    def as_if_pretrained(config):
        config["training"] = {"trainable": "last_layer", "model": "gpt2-small"}
        config["model"] = model_config("gpt2-small")
        config["provenance"]["weights"] |= {"source": "pretrained", "note": "openai-community/gpt2"}

    edit_config(saved_run, as_if_pretrained)
    head = {"out_head.weight": torch.zeros(2, 768), "out_head.bias": torch.zeros(2)}
    save_file(head, saved_run / "model.safetensors")  # what training gpt2-small's head saves
    with pytest.raises(
        DataError,
        match=r"its base model \(gpt2-small, openai-community/gpt2\) "
        r"is not available: cannot fetch openai-community/gpt2 model.safetensors",
    ):
        load_run(saved_run)


def test_a_lora_run_saves_its_updates_and_the_head_and_loads_back(
    tmp_path, config, nano_classifier
):
    lora = fine_tuned(nano_classifier("lora", seed=0))
    lora_config = config | {"training": {**CONFIG["training"], "trainable": "lora"}}
    save_model(tmp_path, lora, lora_config)
    saved = set(load_file(tmp_path / "model.safetensors"))
    # the updates, and the head (frozen beside its own update, yet no part of the base)
    assert saved == {n for n in lora.state_dict() if ".lora." in n or n.startswith("out_head.")}
    assert (
        "out_head.linear.weight" in saved and "trf_blocks.0.att.W_query.linear.weight" not in saved
    )
    model, _ = load_run(tmp_path)
    tokens = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(tokens), lora(tokens))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n in lora.state_dict() if ".lora." in n
    }
    standalone = tmp_path / "standalone"
    standalone.mkdir()
    save_model(standalone, lora, lora_config, everything=True)  # base, updates and head
    with torch.no_grad():
        assert torch.equal(load_run(standalone)[0](tokens), lora(tokens))


def test_a_standalone_run_needs_no_base(tmp_path, classifier):
    save_model(tmp_path, classifier, CONFIG, everything=True)  # no provenance at all
    assert set(load_file(tmp_path / "model.safetensors")) == set(classifier.state_dict())
    model, config = load_run(tmp_path)
    assert config["saved_parameters"] == "all"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, classifier.state_dict()[name]), name


def test_a_run_from_before_holds_every_parameter(tmp_path, classifier):
    save_file(
        {name: tensor.contiguous() for name, tensor in classifier.state_dict().items()},
        tmp_path / "model.safetensors",
    )
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))  # no "saved_parameters"
    model, _ = load_run(tmp_path)
    assert torch.equal(model.out_head.weight, classifier.out_head.weight)


def test_saving_only_what_changed_needs_the_bases_digest(tmp_path, classifier):
    with pytest.raises(ValueError, match="needs the base model's digest"):
        save_model(tmp_path, classifier, CONFIG)
    trained_everything = set_trainable(classifier, "all")
    save_model(tmp_path, trained_everything, CONFIG)  # nothing to rebuild: every parameter
    assert json.loads((tmp_path / "config.json").read_text())["saved_parameters"] == "all"


def test_missing_or_incomplete_runs_are_named(tmp_path, saved_run):
    with pytest.raises(DataError, match="no such run directory"):
        load_run(tmp_path / "nothing")
    (saved_run / "model.safetensors").unlink()
    with pytest.raises(DataError, match="incomplete run, model.safetensors missing"):
        load_run(saved_run)


def test_a_wrong_number_of_classes_is_explained(saved_run):
    edit_config(saved_run, lambda config: config.update(classes=["a", "b", "c"]))
    with pytest.raises(
        DataError, match="the number of classes is 2 in the weights, 3 in config.json"
    ):
        load_run(saved_run)


def test_a_wrong_shape_missing_or_extra_tensor_is_named(saved_run):
    state = load_file(saved_run / "model.safetensors")
    state["trf_blocks.2.norm1.scale"] = torch.ones(7)
    save_file(state, saved_run / "model.safetensors")
    with pytest.raises(
        DataError, match=r"trf_blocks.2.norm1.scale has shape \(7,\), expected \(48,\)"
    ):
        load_run(saved_run)
    del state["trf_blocks.2.norm1.scale"]
    save_file(state, saved_run / "model.safetensors")
    with pytest.raises(DataError, match="missing trf_blocks.2.norm1.scale"):
        load_run(saved_run)
    state["trf_blocks.2.norm1.scale"] = torch.ones(48)
    state["trf_blocks.0.norm1.scale"] = torch.ones(48)  # frozen: it belongs to the base
    save_file(state, saved_run / "model.safetensors")
    with pytest.raises(DataError, match="unexpected trf_blocks.0.norm1.scale"):
        load_run(saved_run)


def edit_tensors(run, edit) -> None:
    """Change a saved run's model.safetensors in place with `edit`, a function of the dict."""
    state = load_file(run / "model.safetensors")
    edit(state)
    save_file(state, run / "model.safetensors")


@pytest.fixture
def standalone_run(tmp_path, classifier):
    """Return the path of a saved run that holds every parameter of the tiny classifier."""
    run = tmp_path / "standalone"
    run.mkdir()
    save_model(run, classifier, CONFIG, everything=True)
    return run


@pytest.mark.parametrize(
    ("run", "edit", "message"),
    [
        (
            "saved_run",
            lambda state: state.update({"out_head.weight": torch.zeros(2, 64)}),
            "model.emb_dim is 64 in the weights, 48 in config.json",
        ),
        (
            "saved_run",
            lambda state: state.pop("trf_blocks.2.att.W_query.bias"),
            "model.qkv_bias is false in the weights, true in config.json",
        ),
        (
            "saved_run",
            lambda state: state.update({name: t.double() for name, t in state.items()}),
            'precision is "float64" in the weights, "float32" in config.json',
        ),
        (
            "standalone_run",
            lambda state: [state.pop(name) for name in list(state) if "blocks.2." in name],
            "model.n_layers is 2 in the weights, 3 in config.json",
        ),
        (
            "standalone_run",
            lambda state: state.update({"tok_emb.weight": torch.zeros(1000, 48)}),
            "model.vocab_size is 1000 in the weights, 50257 in config.json",
        ),
        (
            "standalone_run",
            lambda state: state.update({"pos_emb.weight": torch.zeros(64, 48)}),
            "model.context_length is 64 in the weights, 128 in config.json",
        ),
        (
            "standalone_run",
            lambda state: state.pop("tok_emb.weight"),
            'saved_parameters is "trained" in the weights, "all" in config.json',
        ),
    ],
)
def test_what_the_tensors_tell_must_be_what_config_json_says(request, run, edit, message):
    run = request.getfixturevalue(run)
    edit_tensors(run, edit)
    with pytest.raises(DataError) as refusal:
        load_run(run)
    assert (
        str(refusal.value) == f"{run / 'model.safetensors'} does not match config.json: {message}"
    )


def test_a_standalone_run_relabelled_trained_is_refused_before_any_base_is_sought(standalone_run):
    edit_config(standalone_run, lambda config: config.update(saved_parameters="trained"))
    with pytest.raises(
        DataError, match='saved_parameters is "all" in the weights, "trained" in config.json'
    ):
        load_run(standalone_run)  # CONFIG names no base model: the tensors refuse it first


def test_a_run_relabelled_as_another_size_is_refused_by_its_tensors(standalone_run):
    def as_gpt2_small(config):
        config["training"]["model"] = "gpt2-small"
        config["model"] = model_config("gpt2-small")

    edit_config(standalone_run, as_gpt2_small)
    with pytest.raises(DataError, match="model.n_layers is 3 in the weights, 12 in config.json"):
        load_run(standalone_run)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda config: config.update(precision="float64"),
            'precision is "float64", but training.precision is "float32"',
        ),
        (
            lambda config: config["model"].pop("n_heads"),
            "model.n_heads is null, but training.model gpt2-nano has 3",
        ),
        (
            lambda config: config.update(saved_parameters="some"),
            'saved_parameters is "some", neither "trained" nor "all"',
        ),
        (
            lambda config: config.update(max_length=500),
            "max_length is 500, more than model.context_length 128",
        ),
    ],
)
def test_config_json_must_agree_with_itself(saved_run, edit, message):
    edit_config(saved_run, edit)
    with pytest.raises(DataError) as refusal:
        load_run(saved_run)
    assert str(refusal.value) == f"{saved_run / 'config.json'}: {message}"


def test_a_bfloat16_run_keeps_float32_parameters(saved_run):
    edit_config(saved_run, lambda config: config.update(precision="bfloat16"))
    with pytest.raises(DataError, match='training.precision is "float32"'):
        load_run(saved_run)
    edit_config(saved_run, lambda config: config["training"].update(precision="auto"))
    model, _ = load_run(saved_run)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}


def test_the_parameter_counts_recorded_must_be_the_models(saved_run, classifier):
    total = sum(parameter.numel() for parameter in classifier.parameters())
    trainable = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    counts = {"total": total, "trainable": trainable}
    edit_config(saved_run, lambda config: config.update(parameters=counts))
    load_run(saved_run)
    edit_config(saved_run, lambda config: config["parameters"].update(trainable=total))
    with pytest.raises(DataError) as refusal:
        load_run(saved_run)
    assert str(refusal.value) == (
        f"{saved_run / 'config.json'}: parameters.trainable is {total}, "
        f"but the model it describes has {trainable}"
    )


def test_unreadable_files_are_data_errors(saved_run, config):
    (saved_run / "config.json").write_text("{not json")
    with pytest.raises(DataError, match="not a gptclassifier run configuration"):
        load_run(saved_run)
    (saved_run / "config.json").write_text(json.dumps(config))
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
