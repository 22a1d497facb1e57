"""The whole chapter in one call: data, model, fine-tuning, evaluation and a saved run."""

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gptclassifier import __version__
from gptclassifier.data import LabeledData
from gptclassifier.dataset import create_data_loaders, create_datasets
from gptclassifier.errors import ConfigError
from gptclassifier.evaluate import classification_metrics, classifier_runner, confusion_matrix
from gptclassifier.fast import cache_refusal, choose_precision, has_fused_adamw, parameter_dtype
from gptclassifier.finetune import adapt_for_classification, count_parameters
from gptclassifier.plots import plot_confusion_matrix, plot_values, save_figure
from gptclassifier.prepare import SPLIT_NAMES, prepare_splits, write_splits
from gptclassifier.profiles import TrainSettings, get_profile
from gptclassifier.runs import ensure_run_dir_free, run_writer, save_model, write_json
from gptclassifier.timing import Phases
from gptclassifier.tokenizer import get_tokenizer
from gptclassifier.train import History, choose_device, train_classifier
from gptclassifier.weights import load_base_model


@dataclass(frozen=True)
class RunResult:
    """The outcome of a fine-tuning run."""

    run_dir: Path
    history: History
    metrics: dict
    config: dict
    phases: Phases


def fine_tune(
    labeled: LabeledData,
    settings: TrainSettings,
    out_dir: Path,
    profile: str | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Fine-tune on loaded data as chapter 6 does and save the run; `log` gets progress lines."""
    say = log or (lambda line: None)
    phases = Phases()
    ensure_run_dir_free(out_dir, force)  # before hours of training, not after
    splits = prepare_splits(labeled, seed=settings.split_seed)
    if len(splits["train"]) < settings.batch_size:
        raise ConfigError(
            f"the batch size of {settings.batch_size} is more than the "
            f"{len(splits['train'])} training messages: choose a smaller --batch-size"
        )
    device = choose_device()
    precision = choose_precision(device, settings.precision)
    with phases.measure("model"):
        base = load_base_model(settings.model, settings.seed, settings.weights)
        model = adapt_for_classification(base.model, settings, len(labeled.classes))
        model.to(device, parameter_dtype(precision))
    with phases.measure("tokenizing"):
        datasets = create_datasets(
            splits, get_tokenizer(), base.config["context_length"], settings.padding
        )
        trim = settings.trims_padding
        loaders = create_data_loaders(
            datasets, settings.batch_size, trim=trim, bucket=trim and settings.bucket
        )
    total, trainable = count_parameters(model)
    origin = labeled.provenance
    say(f"data: {origin.source} {origin.path} ({len(labeled.frame):,} messages)")
    say(f"weights: {base.provenance['source']} ({base.provenance['note']})")
    say(
        f"model: {settings.model}, {total:,} parameters, {trainable:,} trainable "
        f"({settings.trainable}), {settings.pooling} pooling, {settings.loop} loop, "
        f"{precision} on {device}"
    )
    with phases.measure("cache pass"):
        runner = classifier_runner(model, settings, precision, datasets.values())
    say(_which_loop(model, settings, phases.seconds["cache pass"], datasets))
    with phases.measure("training"):
        # The chapter seeds the global generator again right before training: every shuffle of
        # every pass over the loaders (evaluation passes included) draws from it from here on.
        torch.manual_seed(settings.seed)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
            fused=settings.loop == "fast" and has_fused_adamw(device),
        )  # fmt: skip
        history = train_classifier(
            runner, loaders["train"], loaders["validation"], optimizer, device,
            settings.num_epochs, settings.eval_freq, settings.eval_iter, settings.pooling,
            progress, log=log, ignore_index=settings.ignore_index,
        )  # fmt: skip
    with phases.measure("evaluation"):
        metrics = {
            name: classification_metrics(
                confusion_matrix(
                    runner, loaders[name], device, len(labeled.classes), settings.pooling
                )
            )
            for name in SPLIT_NAMES
        }
    config = {
        "model": base.config,
        "classes": list(labeled.classes),
        "max_length": datasets["train"].max_length,
        "pooling": settings.pooling,
        "profile": get_profile(profile).name,
        "training": asdict(settings),
        "parameters": {"total": total, "trainable": trainable},
        "device": str(device),
        "precision": precision,
        "provenance": {"data": labeled.provenance.as_dict(), "weights": base.provenance},
        "gptclassifier_version": __version__,
    }
    with phases.measure("saving"), run_writer(out_dir, force) as staging:
        save_model(staging, model, config)
        write_json(staging / "metrics.json", metrics)
        write_json(staging / "history.json", history.as_dict())
        write_splits(
            splits, labeled, staging / "data", parsing=settings.parsing, seed=settings.split_seed
        )
        _save_plots(staging, history, metrics["test"]["confusion_matrix"], labeled.classes)
    return RunResult(Path(out_dir), history, metrics, config, phases)


def _which_loop(model, settings: TrainSettings, seconds: float, datasets: dict) -> str:
    """Say which loop trains, and why when the fast loop cannot use its cache."""
    if settings.loop == "chapter":
        return "the chapter's loop: every block runs on every step"
    refusal = cache_refusal(model)
    if refusal:
        return f"the chapter's loop runs every block on every step: {refusal}"
    messages = sum(map(len, datasets.values()))
    return (
        f"fast loop ready in {seconds:.1f} s "
        f"(the frozen blocks ran once over {messages:,} messages)"
    )


def _save_plots(run_dir: Path, history: History, test_confusion, classes) -> None:
    """Save the loss and accuracy curves and the test confusion matrix as PNG and PDF."""
    for label, train_values, val_values in (
        ("loss", history.train_losses, history.val_losses),
        ("accuracy", history.train_accs, history.val_accs),
    ):
        points = len(train_values)
        epochs_seen = torch.linspace(0, history.num_epochs, points)
        examples_seen = torch.linspace(0, history.examples_seen, points)
        figure = plot_values(epochs_seen, examples_seen, train_values, val_values, label)
        save_figure(figure, run_dir / label)
    save_figure(plot_confusion_matrix(test_confusion, classes), run_dir / "confusion_matrix")
