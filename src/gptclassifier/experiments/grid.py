"""Running the book's design experiments over several seeds, and their table and figure."""

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gptclassifier.data.sms import LabeledData
from gptclassifier.data.splits import SPLIT_NAMES, prepare_splits, write_splits
from gptclassifier.errors import ConfigError
from gptclassifier.evaluation.baselines import baseline_metrics
from gptclassifier.experiments.book_table import (
    EXPERIMENTS,
    Experiment,
    choose_experiments,
    row_settings,
)
from gptclassifier.files import read_json, write_atomically, write_json
from gptclassifier.fine_tune import fine_tune, training_workload
from gptclassifier.locks import output_lock
from gptclassifier.plots import save_figure
from gptclassifier.progress import progress_bar, silent
from gptclassifier.runs import CONFIG_FILE, run_writer
from gptclassifier.settings import TrainSettings, train_settings
from gptclassifier.training.device import choose_device
from gptclassifier.training.estimate import GB, Estimate, estimate_run
from gptclassifier.training.runners import available_memory

RESULTS_FILE = "results.csv"
TABLE_FILE = "results.md"
FIGURE_STEM = "results"
METRICS_FILE = "metrics.json"
TOO_BIG = "too big"  # the status of a run whose estimated peak does not fit in memory
UNFINISHED = {"failed": "failed", "too_big": TOO_BIG}  # the summary's counts, by status
PLAN_COLUMNS = ("experiment", "seed", "estimated_minutes", "peak_gb", "fits", "done", "run_dir")


@dataclass(frozen=True)
class PlannedRun:
    """One run of the grid before anything runs: its folder, settings and estimate."""

    experiment: Experiment
    seed: int
    run_dir: Path
    settings: TrainSettings
    estimate: Estimate | None  # None for a baseline: seconds and little memory anywhere
    done: bool  # already run: it is read, not run again
    fits: bool  # done, or its estimated peak fits in the memory available

    @property
    def minutes(self) -> float:
        """The estimated minutes still to spend on this run."""
        return 0.0 if self.done or self.estimate is None else self.estimate.minutes


def plan_experiments(
    labeled: LabeledData,
    out_dir: Path,
    names: Sequence[str] | None = None,
    seeds: Sequence[int] = (123,),
    profile: str | None = None,
    overrides: dict | None = None,
    redo: bool = False,
    available: int | None = None,
) -> list[PlannedRun]:
    """Return every (row, seed) with its estimate, whether it is done and whether it fits.

    A run fits when its estimated peak memory fits in `available` bytes with headroom (see
    Estimate.fits). The split is always the profile's (the chapter's, seed 123); `overrides`
    apply to every run, before each row's settings (row_settings: with the profile's sizes).
    """
    common = train_settings(profile, **(overrides or {}))
    common = replace(common, data_seed=common.split_seed)  # one split for every seed
    device = choose_device()
    plan = []
    for experiment in choose_experiments(names):
        settings = replace(common, **row_settings(experiment, profile))
        estimate = None  # a row's estimate does not depend on the seed
        if experiment.baseline is None:
            workload = training_workload(labeled, settings)
            estimate = estimate_run(settings, workload, len(labeled.classes), device)
        for seed in seeds:
            run_dir = Path(out_dir) / experiment.name / f"seed-{seed}"
            done = not redo and (run_dir / METRICS_FILE).is_file()
            fits = done or estimate is None or estimate.fits(available)
            plan.append(
                PlannedRun(
                    experiment, seed, run_dir, replace(settings, seed=seed), estimate, done, fits
                )
            )
    return plan


def plan_frame(plan: Sequence[PlannedRun]) -> pd.DataFrame:
    """Return the plan as a table: a line per run, its estimate, whether it fits and is done."""
    return pd.DataFrame(
        [
            {
                "experiment": run.experiment.name,
                "seed": run.seed,
                **_estimated(run),
                "fits": run.fits,
                "done": run.done,
                "run_dir": str(run.run_dir),
            }
            for run in plan
        ],
        columns=PLAN_COLUMNS,
    )


def format_plan(plan: pd.DataFrame) -> str:
    """Return the plan as aligned text for a terminal, with what is to do in the last line."""
    shown = plan.drop(columns="run_dir").rename(
        columns={"estimated_minutes": "minutes", "peak_gb": "peak GB"}
    )
    yes_no = {True: "yes", False: "no"}
    text = shown.to_string(
        index=False,
        na_rep="-",
        formatters={
            "minutes": "{:.2f}".format,
            "peak GB": "{:.2f}".format,
            "fits": yes_no.get,
            "done": yes_no.get,
        },
    )
    to_do = plan[plan["fits"] & ~plan["done"]]
    minutes = to_do["estimated_minutes"].fillna(0).sum()
    return f"{text}\n{len(to_do)} of {len(plan)} runs to do, about {minutes:.1f} minutes\n"


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
    dry_run: bool = False,
) -> pd.DataFrame:
    """Run each experiment once per seed on the chapter's split; return a line per run.

    First the plan (plan_experiments): each run's estimated minutes and peak memory against
    the memory available. By default the rows that would not fit are left out, a log line
    each, and recorded as "too big" with their estimate (in results.csv before the first run
    starts); a row named in `names` that would not fit is refused before anything runs. With
    `dry_run` nothing runs and the whole plan is returned (plan_frame; format_plan prints it).
    Each run is a run folder `<out_dir>/<name>/seed-<seed>` (a baseline's holds its metrics and
    configuration). A run already there is read, not run again, unless `redo`; a run that fails
    is recorded with its error and the others go on. The seed changes the head, the shuffles,
    LoRA's and random weights. Writes results.csv, results.md and the results figure to
    `out_dir` and returns the lines. `out_dir` is locked throughout, except in a dry run,
    which writes nothing: another command aimed at it is refused at once.
    """
    with contextlib.nullcontext() if dry_run else output_lock(out_dir):
        available = available_memory(choose_device())
        plan = plan_experiments(labeled, out_dir, names, seeds, profile, overrides, redo, available)
        _refuse_or_leave_out(plan, available, refuse=bool(names) and not dry_run, log=log)
        if dry_run:
            return plan_frame(plan)
        results = _run_plan(plan, available, labeled, out_dir, profile, progress, log)
        write_results(results, out_dir)
        return results


def _run_plan(
    plan, available: int | None, labeled, out_dir, profile, progress, log
) -> pd.DataFrame:
    """Run or read each run that fits, in the plan's order; return a line per run, too big or not.

    results.csv is written before the first run starts, with the runs too big for the memory
    available, and again after each run: it always holds what is known so far.
    """
    lines = {index: _too_big(run, available) for index, run in enumerate(plan) if not run.fits}
    to_run = [(index, run) for index, run in enumerate(plan) if run.fits]
    minutes_left = sum(run.minutes for _, run in to_run)
    log(f"{len(to_run)} runs, about {minutes_left:.1f} minutes of training")
    _record(lines, out_dir)
    bar = progress_bar(sum(not run.done for _, run in to_run), "experiments", progress, unit="run")
    with bar:
        for number, (index, run) in enumerate(to_run, start=1):
            lines[index] = _run_or_read(run, labeled, profile, progress)
            outcome = _outcome(lines[index], run)
            if not run.done:
                minutes_left = max(minutes_left - run.minutes, 0.0)
                bar.update()
                bar.set_postfix_str(f"about {minutes_left:.1f} min left")
                outcome += f"; about {minutes_left:.1f} min left"
            log(f"[{number}/{len(to_run)}] {run.experiment.name}, seed {run.seed}: {outcome}")
            _record(lines, out_dir)
    return _in_plan_order(lines)


def _in_plan_order(lines: dict[int, dict]) -> pd.DataFrame:
    """Return the results lines, keyed by their place in the plan, as a table in that order."""
    return pd.DataFrame([line for _, line in sorted(lines.items())])


def _record(lines: dict[int, dict], out_dir: Path) -> None:
    """Write the results lines known so far to results.csv, when there are any."""
    if lines:
        _write_csv(_in_plan_order(lines), out_dir)


def _refuse_or_leave_out(plan, available: int | None, refuse: bool, log) -> None:
    """Refuse a named row that would not fit (`refuse`), else say why each such row is left out."""
    too_big = {run.experiment.name: run.estimate for run in plan if not run.fits}
    for name, estimate in too_big.items():
        needs = estimate.needs(available)
        if refuse:
            raise ConfigError(
                f"experiment {name} {needs}: leave it out of the rows, or run it on a machine "
                "with more memory"
            )
        log(f"left out {name}: it {needs}")


def _run_or_read(run: PlannedRun, labeled: LabeledData, profile, progress: bool) -> dict:
    """Run a planned run, or read it when it is done; return its results line, failed or not."""
    try:
        if run.done:
            config = read_json(run.run_dir / CONFIG_FILE)
            _check_current(run.run_dir, config, run.experiment, run.settings, labeled)
        else:
            _run(run.experiment, labeled, run.run_dir, run.settings, profile, progress)
            config = read_json(run.run_dir / CONFIG_FILE)
    except Exception as exc:  # a failed run is recorded and the others go on
        return _failed(run, exc)
    return _result(run, config)


def _outcome(line: dict, run: PlannedRun) -> str:
    """Say how a run ended: its accuracies, read from its folder, or why it failed."""
    if line["status"] != "ok":
        return f"failed: {line['error']}"
    if run.done:
        return f"already run, read from {run.run_dir}"
    return f"validation {line['validation_accuracy']:.2f}%, test {line['test_accuracy']:.2f}%"


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


def _result(run: PlannedRun, config: dict) -> dict:
    """Return one line of results.csv from a finished run folder and its configuration."""
    metrics = read_json(run.run_dir / METRICS_FILE)
    history_file = run.run_dir / "history.json"
    minutes = read_json(history_file)["seconds"] / 60 if history_file.is_file() else math.nan
    line = _line(run, status="ok")
    for split in SPLIT_NAMES:
        line[f"{split}_accuracy"] = 100 * metrics[split]["accuracy"]
    weights = config.get("provenance", {}).get("weights", {}).get("source", "none")
    trainable = config.get("parameters", {}).get("trainable", math.nan)
    return line | {
        "training_minutes": minutes,
        "trainable_parameters": trainable,
        "weights": weights,
    }


def _failed(run: PlannedRun, exc: Exception) -> dict:
    """Return the results line of a run that failed."""
    return _line(run, status="failed") | {"error": str(exc) or repr(exc)}


def _too_big(run: PlannedRun, available: int) -> dict:
    """Return the results line of a run left out: its estimated peak does not fit in memory."""
    return _line(run, status=TOO_BIG) | {"error": f"it {run.estimate.needs(available)}"}


def _line(run: PlannedRun, status: str) -> dict:
    """Return the columns every results line has, the run's estimate among them."""
    return {
        "experiment": run.experiment.name,
        "book_row": run.experiment.book_row,
        "seed": run.seed,
        "status": status,
        "model": None if run.experiment.baseline else run.settings.model,
        "run_dir": str(run.run_dir),
        **_estimated(run),
    }


def _estimated(run: PlannedRun) -> dict:
    """Return a run's estimated minutes and peak memory in GB (none for a baseline)."""
    if run.estimate is None:
        return {"estimated_minutes": math.nan, "peak_gb": math.nan}
    return {"estimated_minutes": run.estimate.minutes, "peak_gb": run.estimate.peak_bytes / GB}


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
    for column, status in UNFINISHED.items():
        stats[column] = (results["status"] == status).groupby(results["experiment"]).sum()
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
            _change(experiment, results),
            _seeds_cell(stats),
            *(_mean_and_spread(stats, f"{split}_accuracy") for split in SPLIT_NAMES),
            " / ".join(f"{value:.2f}" for value in experiment.book) if experiment.book else "",
            _number(stats["training_minutes_mean"], ".2f"),
            _number(experiment.book_minutes, ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"


def _change(experiment: Experiment, results: pd.DataFrame) -> str:
    """Say what a row changes, and which model stood in for the row's (the smoke profile's)."""
    stated = experiment.settings.get("model")
    rows = results[results["experiment"] == experiment.name]
    used = rows["model"].dropna() if "model" in rows else ()
    stand_in = used.iloc[0] if stated and len(used) else stated
    return experiment.change + (f"; here {stand_in}" if stand_in != stated else "")


def _seeds_cell(stats: pd.Series) -> str:
    """Say how many seeds ran, and how many failed or were too big to run: 1 (2 too big)."""
    notes = [f"{int(stats[column])} {what}" for column, what in UNFINISHED.items() if stats[column]]
    return f"{int(stats['seeds'])}" + (f" ({', '.join(notes)})" if notes else "")


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
    labels = [
        f"{name} ({TOO_BIG})" if stats["too_big"] and not stats["seeds"] else name
        for name, stats in summary.iterrows()
    ]
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=3, fontsize=8)
    return fig


def write_results(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write results.csv, results.md and the figure (PNG and PDF) to `out_dir`."""
    out_dir = Path(out_dir)
    csv_file, table_file = _write_csv(results, out_dir), out_dir / TABLE_FILE
    write_atomically(table_file, markdown_table(results).encode("utf-8"))
    return [csv_file, table_file, *save_figure(plot_experiments(results), out_dir / FIGURE_STEM)]


def _write_csv(results: pd.DataFrame, out_dir: Path) -> Path:
    """Write results.csv whole, or not at all; return its path."""
    path = Path(out_dir) / RESULTS_FILE
    write_atomically(path, results.to_csv(index=False).encode("utf-8"))
    return path
