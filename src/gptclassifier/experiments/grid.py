"""Running the book's design experiments over several seeds, and their table and figure."""

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gptclassifier.evaluation.baselines import baseline_metrics
from gptclassifier.experiments.book_table import EXPERIMENTS, Experiment, choose_experiments
from gptclassifier.data.sms import LabeledData
from gptclassifier.files import atomic_writer
from gptclassifier.errors import ConfigError
from gptclassifier.fine_tune import fine_tune
from gptclassifier.plots import save_figure
from gptclassifier.data.splits import SPLIT_NAMES, prepare_splits, write_splits
from gptclassifier.settings import TrainSettings, train_settings
from gptclassifier.progress import silent
from gptclassifier.runs import CONFIG_FILE, run_writer
from gptclassifier.files import read_json, write_json

RESULTS_FILE = "results.csv"
TABLE_FILE = "results.md"
FIGURE_STEM = "results"
METRICS_FILE = "metrics.json"


def run_experiments(
    labeled: LabeledData,
    out_dir: Path,
    names: Sequence[str] | None = None,
    seeds: Sequence[int] = (123,),
    profile: str | None = None,
    overrides: dict | None = None,
    redo: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = silent,
) -> pd.DataFrame:
    """Run each experiment once per seed on the chapter's split; return a line per run.

    Each run is a run folder `<out_dir>/<name>/seed-<seed>` (a baseline's holds its metrics and
    configuration). A run already there is read, not run again, unless `redo`; a run that fails
    is recorded with its error and the others go on. The split is always the profile's (the
    chapter's, seed 123); the seed changes the head, the shuffles, LoRA's and random weights.
    `overrides` (e.g. parsing or num_epochs) apply to every run, before each row's settings.
    Writes results.csv, results.md and the results figure to `out_dir` and returns the lines.
    """
    experiments = choose_experiments(names)
    common = train_settings(profile, **(overrides or {}))
    common = replace(common, data_seed=common.split_seed)  # one split for every seed
    out_dir = Path(out_dir)
    lines = []
    for index, (experiment, seed) in enumerate(
        [(experiment, seed) for experiment in experiments for seed in seeds], start=1
    ):
        run_dir = out_dir / experiment.name / f"seed-{seed}"
        settings = replace(common, seed=seed, **experiment.settings)
        what = f"[{index}/{len(experiments) * len(seeds)}] {experiment.name}, seed {seed}"
        try:
            if redo or not (run_dir / METRICS_FILE).is_file():
                _run(experiment, labeled, run_dir, settings, profile, progress)
                config = read_json(run_dir / CONFIG_FILE)
            else:
                config = read_json(run_dir / CONFIG_FILE)
                _check_current(run_dir, config, experiment, settings, labeled)
                log(f"{what}: already run, read from {run_dir}")
        except Exception as exc:  # a failed run is recorded and the others go on
            lines.append(_failed(experiment, seed, run_dir, exc))
            log(f"{what}: failed: {exc}")
            continue
        lines.append(_result(experiment, seed, run_dir, config))
        log(f"{what}: {_accuracies(lines[-1])}")
    results = pd.DataFrame(lines)
    write_results(results, out_dir)
    return results


def _run(experiment, labeled, run_dir, settings: TrainSettings, profile, progress) -> None:
    """Fine-tune (or fit a baseline) for one experiment into `run_dir`."""
    if experiment.baseline is None:
        fine_tune(labeled, settings, run_dir, profile, force=True, progress=progress)
        return
    splits = prepare_splits(labeled, seed=settings.split_seed)
    metrics = baseline_metrics(experiment.baseline, splits, len(labeled.classes), settings.seed)
    config = {
        "baseline": experiment.baseline,
        "classes": list(labeled.classes),
        "seed": settings.seed,
        "provenance": {"data": labeled.provenance.as_dict()},
    }
    with run_writer(run_dir, force=True) as staging:
        write_json(staging / METRICS_FILE, metrics)
        write_json(staging / CONFIG_FILE, config)
        write_splits(
            splits, labeled, staging / "data", parsing=settings.parsing, seed=settings.split_seed
        )


def _check_current(
    run_dir: Path,
    config: dict,
    experiment: Experiment,
    settings: TrainSettings,
    labeled: LabeledData,
) -> None:
    """Raise a ConfigError when a finished run's `config` names other data or settings."""
    if config.get("provenance", {}).get("data", {}).get("sha256") != labeled.provenance.sha256:
        differs = ["other data"]
    elif experiment.baseline is not None:
        differs = [] if config.get("seed") == settings.seed else ["another seed"]
    else:
        asked, recorded = asdict(settings), config.get("training", {})
        differs = [
            f"{name} {recorded.get(name)!r}, not {value!r}"
            for name, value in asked.items()
            if recorded.get(name) != value
        ]
    if differs:
        raise ConfigError(
            f"{run_dir} was run with {'; '.join(differs)}: add --redo to run it again"
        )


def _result(experiment: Experiment, seed: int, run_dir: Path, config: dict) -> dict:
    """Return one line of results.csv from a finished run folder and its configuration."""
    metrics = read_json(run_dir / METRICS_FILE)
    history_file = run_dir / "history.json"
    minutes = read_json(history_file)["seconds"] / 60 if history_file.is_file() else math.nan
    line = _line(experiment, seed, run_dir, status="ok")
    for split in SPLIT_NAMES:
        line[f"{split}_accuracy"] = 100 * metrics[split]["accuracy"]
    weights = config.get("provenance", {}).get("weights", {}).get("source", "none")
    trainable = config.get("parameters", {}).get("trainable", math.nan)
    return line | {
        "training_minutes": minutes,
        "trainable_parameters": trainable,
        "weights": weights,
    }


def _failed(experiment: Experiment, seed: int, run_dir: Path, exc: Exception) -> dict:
    """Return the results line of a run that failed."""
    return _line(experiment, seed, run_dir, status="failed") | {"error": str(exc) or repr(exc)}


def _line(experiment: Experiment, seed: int, run_dir: Path, status: str) -> dict:
    """Return the columns every results line has."""
    return {
        "experiment": experiment.name,
        "book_row": experiment.book_row,
        "seed": seed,
        "status": status,
        "run_dir": str(run_dir),
    }


def _accuracies(line: dict) -> str:
    """Say a run's validation and test accuracy."""
    return f"validation {line['validation_accuracy']:.2f}%, test {line['test_accuracy']:.2f}%"


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Return per experiment the mean, standard deviation, minimum and maximum of each accuracy.

    Only finished runs count; the standard deviation (n - 1 in the denominator) needs two seeds.
    """
    columns = [f"{split}_accuracy" for split in SPLIT_NAMES] + ["training_minutes"]
    # reindex: a table where every run failed has no accuracy columns
    finished = results.reindex(columns=["experiment", *columns])[results["status"] == "ok"]
    order = list(dict.fromkeys(results["experiment"]))
    stats = finished.groupby("experiment", sort=False)[columns].agg(["mean", "std", "min", "max"])
    stats.columns = [f"{column}_{stat}" for column, stat in stats.columns]
    stats = stats.reindex(order)  # a row whose every run failed keeps its line
    stats["seeds"] = finished.groupby("experiment").size().reindex(order, fill_value=0)
    stats["failed"] = (results["status"] != "ok").groupby(results["experiment"]).sum()
    return stats


def markdown_table(results: pd.DataFrame) -> str:
    """Return the summary as a Markdown table, the book's numbers beside ours."""
    summary = summarize(results)
    header = (
        "| book row | experiment | change | seeds | training % | validation % | test % "
        "| book: training / validation / test % | minutes | book minutes |\n"
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for name, stats in summary.iterrows():
        experiment = EXPERIMENTS[name]
        cells = [
            str(experiment.book_row or ""),
            name,
            experiment.change,
            f"{int(stats['seeds'])}"
            + (f" ({int(stats['failed'])} failed)" if stats["failed"] else ""),
            *(_mean_and_spread(stats, f"{split}_accuracy") for split in SPLIT_NAMES),
            " / ".join(f"{value:.2f}" for value in experiment.book) if experiment.book else "",
            _number(stats["training_minutes_mean"], ".2f"),
            _number(experiment.book_minutes, ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"


def _mean_and_spread(stats: pd.Series, column: str) -> str:
    """Format a mean with its standard deviation, when there is one: 95.67 ± 0.58."""
    mean, spread = stats[f"{column}_mean"], stats[f"{column}_std"]
    if np.isnan(mean):
        return ""
    return f"{mean:.2f}" + ("" if np.isnan(spread) else f" ± {spread:.2f}")


def _number(value, spec: str) -> str:
    """Format a number, or nothing for a missing one."""
    return "" if value is None or np.isnan(value) else format(value, spec)


def plot_experiments(results: pd.DataFrame) -> Figure:
    """Draw each experiment's mean validation and test accuracy, the spread and the book's test."""
    summary = summarize(results)
    fig = Figure(figsize=(max(6.0, 0.6 * len(summary) + 2), 4.2))
    fig.set_layout_engine("constrained")
    ax = fig.add_subplot()
    x = np.arange(len(summary))
    for offset, split, colour in ((-0.15, "validation", "tab:blue"), (0.15, "test", "tab:orange")):
        ax.errorbar(
            x + offset,
            summary[f"{split}_accuracy_mean"],
            yerr=summary[f"{split}_accuracy_std"].fillna(0),
            fmt="o",
            capsize=3,
            color=colour,
            label=f"{split} (mean ± sd over seeds)",
        )
    book = [EXPERIMENTS[name].book for name in summary.index]
    book_test = [accuracies[2] if accuracies else np.nan for accuracies in book]
    ax.scatter(x + 0.15, book_test, marker="x", color="black", zorder=3, label="the book's test")
    ax.set_xticks(x, summary.index, rotation=45, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=3, fontsize=8)
    return fig


def write_results(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write results.csv, results.md and the figure (PNG and PDF) to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_file, table_file = out_dir / RESULTS_FILE, out_dir / TABLE_FILE
    for path, text in (
        (csv_file, results.to_csv(index=False)),
        (table_file, markdown_table(results)),
    ):
        with atomic_writer(path) as file:
            file.write(text.encode("utf-8"))
    return [csv_file, table_file, *save_figure(plot_experiments(results), out_dir / FIGURE_STEM)]
