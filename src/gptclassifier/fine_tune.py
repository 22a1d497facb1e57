"""The whole chapter in one call: data, model, fine-tuning, evaluation and a saved run."""

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from gptclassifier import __version__
from gptclassifier.data.loaders import create_data_loaders, create_datasets
from gptclassifier.data.sms import LabeledData
from gptclassifier.data.splits import SPLIT_NAMES, prepare_splits, write_splits
from gptclassifier.errors import ConfigError
from gptclassifier.evaluation.metrics import classification_metrics, confusion_matrix
from gptclassifier.files import write_json
from gptclassifier.locks import locks_out_dir
from gptclassifier.model.classifier import adapt_for_classification, count_parameters
from gptclassifier.model.gpt import model_config
from gptclassifier.model.tokenizer import get_tokenizer
from gptclassifier.model.weights import load_base_model
from gptclassifier.plots import plot_confusion_matrix, plot_values, save_figure
from gptclassifier.progress import Phases, progress_bar, silent, ticking
from gptclassifier.runs import ensure_run_dir_free, run_writer, save_model
from gptclassifier.settings import TrainSettings, get_profile
from gptclassifier.training.device import (
    choose_device,
    choose_precision,
    has_fused_adamw,
    keep_freed_memory,
    parameter_dtype,
)
from gptclassifier.training.estimate import GB, estimate_run
from gptclassifier.training.flops import Workload
from gptclassifier.training.loop import History, train_classifier
from gptclassifier.training.runners import available_memory, cache_refusal, classifier_runner


@dataclass(frozen=True)
class RunResult:
    """The outcome of a fine-tuning run."""

    run_dir: Path
    history: History
    metrics: dict
    config: dict
    phases: Phases


@locks_out_dir
def fine_tune(
    labeled: LabeledData,
    settings: TrainSettings,
    out_dir: Path,
    profile: str | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = silent,
    on_update: Callable[[History], None] | None = None,
    device: str = "auto",
) -> RunResult:
    """Fine-tune on loaded data as chapter 6 does and save the run; `log` gets progress lines.

    The phases are timed by name (tokenizing, model, cache pass, training, evaluation,
    saving), as `make bench` reports them; `progress` shows a bar for each long one.
    `on_update` gets the history after each measurement (for a live view), as
    train_classifier passes it on. `device`: auto, cpu, cuda or mps. `out_dir` is locked from
    the start: another command aimed at it is refused at once, before it loads anything.
    """
    ensure_run_dir_free(out_dir, force)  # before hours of training, not after
    phases = Phases()
    splits = split_for_training(labeled, settings)
    device = choose_device(device)
    precision = choose_precision(device, settings.precision)
    keep_freed_memory()
    with phases.measure("tokenizing"):
        context_length = model_config(settings.model)["context_length"]
        datasets, loaders = tokenize_splits(splits, settings, context_length)
    workload = Workload.of(datasets, settings)
    check_memory(workload, settings, len(labeled.classes), device, log)  # before weights load
    with phases.measure("model"):
        base, model = build_classifier(settings, len(labeled.classes), device, precision)
    log_setup(log, labeled, base, model, settings, f"{precision} on {device}")
    with phases.measure("cache pass"):
        runner = classifier_runner(model, settings, precision, datasets.values(), progress)
    log(_which_loop(model, settings, phases.seconds["cache pass"], datasets))
    with phases.measure("training"):
        history = train(runner, model, loaders, settings, device, progress, log, on_update)
    with phases.measure("evaluation"):
        metrics = evaluate_splits(
            runner, loaders, device, len(labeled.classes), settings.pooling, progress
        )
    config = run_config(labeled, base, model, datasets, settings, profile, device, precision)
    with phases.measure("saving"):
        save_run(out_dir, force, model, config, metrics, history, splits, labeled, settings)
    return RunResult(Path(out_dir), history, metrics, config, phases)


def split_for_training(labeled: LabeledData, settings: TrainSettings) -> dict[str, pd.DataFrame]:
    """Balance and split the data; refuse a batch larger than the training split."""
    splits = prepare_splits(labeled, seed=settings.split_seed)
    if len(splits["train"]) < settings.batch_size:
        raise ConfigError(
            f"the batch size of {settings.batch_size} is more than the "
            f"{len(splits['train'])} training messages: choose a smaller --batch-size"
        )
    return splits


def training_workload(labeled: LabeledData, settings: TrainSettings) -> Workload:
    """Return what fine-tuning on `labeled` with `settings` runs through: its split, tokenized."""
    splits = prepare_splits(labeled, seed=settings.split_seed)
    context_length = model_config(settings.model)["context_length"]
    datasets, _ = tokenize_splits(splits, settings, context_length)
    return Workload.of(datasets, settings)


def check_memory(workload: Workload, settings: TrainSettings, num_classes: int, device, log):
    """Log the run's estimated minutes and peak memory; refuse it when the peak cannot fit."""
    # The minutes cost a speed probe (most of a second): measured only where they are shown.
    shown = log is not silent
    estimate = estimate_run(settings, workload, num_classes, device, timed=shown)
    available = available_memory(device)
    if not estimate.fits(available):
        raise ConfigError(
            f"this run {estimate.needs(available)}: choose {estimate.remedy(settings)}"
        )
    if not shown:
        return
    of = "" if available is None else f" of {available / GB:.1f} GB available"
    log(
        f"estimate: about {estimate.minutes:.1f} minutes and "
        f"{estimate.peak_bytes / GB:.1f} GB of memory at its peak{of}"
    )


def build_classifier(settings: TrainSettings, num_classes: int, device, precision: str):
    """Return the base model's record and the classifier made from it, on `device`."""
    base = load_base_model(settings.model, settings.seed, settings.weights)
    model = adapt_for_classification(base.model, settings, num_classes)
    return base, model.to(device, parameter_dtype(precision))


def tokenize_splits(splits: dict, settings: TrainSettings, context_length: int):
    """Return the splits as padded datasets, and their loaders batched as the settings say."""
    datasets = create_datasets(splits, get_tokenizer(), context_length, settings.padding)
    trim = settings.trims_padding
    loaders = create_data_loaders(
        datasets, settings.batch_size, trim=trim, bucket=trim and settings.bucket
    )
    return datasets, loaders


def log_setup(log, labeled: LabeledData, base, model, settings: TrainSettings, where: str):
    """Log where the data and weights came from and what trains, on what."""
    total, trainable = count_parameters(model)
    origin = labeled.provenance
    log(f"data: {origin.source} {origin.path} ({len(labeled.frame):,} messages)")
    log(f"weights: {base.provenance['source']} ({base.provenance['note']})")
    log(
        f"model: {settings.model}, {total:,} parameters, {trainable:,} trainable "
        f"({settings.trainable}), {settings.pooling} pooling, {settings.loop} loop, {where}"
    )


def train(
    runner, model, loaders: dict, settings: TrainSettings, device, progress, log, on_update=None
) -> History:
    """Train the runner with AdamW as the chapter does; return what the loop measured."""
    # The chapter seeds the global generator again right before training: every shuffle of
    # every pass over the loaders (evaluation passes included) draws from it from here on.
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
        fused=settings.loop == "fast" and has_fused_adamw(device),
    )  # fmt: skip
    return train_classifier(
        runner, loaders["train"], loaders["validation"], optimizer, device,
        settings.num_epochs, settings.eval_freq, settings.eval_iter, settings.pooling,
        progress, on_update, log, settings.ignore_index,
    )  # fmt: skip


def evaluate_splits(
    runner, loaders: dict, device, num_classes: int, pooling: str, progress=False
) -> dict:
    """Return the metrics of every split, over every message."""
    batches = sum(len(loaders[name]) for name in SPLIT_NAMES)
    with progress_bar(batches, "evaluating every split", progress, "batch") as bar:
        return {
            name: classification_metrics(
                confusion_matrix(runner, ticking(loaders[name], bar), device, num_classes, pooling)
            )
            for name in SPLIT_NAMES
        }


def run_config(labeled, base, model, datasets, settings, profile, device, precision) -> dict:
    """Return what config.json records: the model, the data, the settings and their sources."""
    total, trainable = count_parameters(model)
    # "model" and "pooling" repeat what training's model and pooling decide, for readers:
    # load_run refuses a run whose copies disagree.
    return {
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


def save_run(out_dir, force, model, config, metrics, history, splits, labeled, settings) -> None:
    """Write the run folder whole: weights, configuration, metrics, history, splits, plots."""
    with run_writer(out_dir, force) as staging:
        save_model(staging, model, config)
        write_json(staging / "metrics.json", metrics)
        write_json(staging / "history.json", history.as_dict())
        write_splits(
            splits, labeled, staging / "data", parsing=settings.parsing, seed=settings.split_seed
        )
        _save_plots(staging, history, metrics["test"]["confusion_matrix"], labeled.classes)


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
