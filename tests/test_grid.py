"""The experiment grid: rows over seeds, baselines, runs already done, failures, the summary."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from gptclassifier.errors import ConfigError
from gptclassifier.experiments import grid as experiments
from gptclassifier.experiments.book_table import EXPERIMENTS
from gptclassifier.experiments.grid import (
    format_plan,
    markdown_table,
    plan_experiments,
    plot_experiments,
    run_experiments,
    summarize,
)
from gptclassifier.runs import load_run
from gptclassifier.training.estimate import HEADROOM

QUICK = {"num_epochs": 1}
ROWS = ["chapter", "lora", "mean", "majority", "tfidf"]


@pytest.fixture(scope="module")
def grid(smoke_data, tmp_path_factory):
    """Run five rows over two seeds once, in the smoke profile; return the folder and lines.

    It trains six runs (about 3.5 s): every test that uses it is marked slow.
    """
    out = tmp_path_factory.mktemp("grid")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPTCLASSIFIER_CACHE", str(tmp_path_factory.mktemp("cache")))
        results = run_experiments(smoke_data, out, ROWS, [1, 2], "smoke", QUICK, progress=False)
    return out, results


@pytest.mark.slow
def test_each_row_and_seed_is_a_run_folder_on_the_chapters_split(grid):
    out, results = grid
    assert len(results) == len(ROWS) * 2 and (results["status"] == "ok").all()
    tests = {
        (out / row / f"seed-{seed}" / "data" / "test.csv").read_text()
        for row in ROWS
        for seed in (1, 2)
    }
    assert len(tests) == 1  # one split for every row and seed
    model, config = load_run(out / "lora" / "seed-2")
    assert config["training"]["trainable"] == "lora" and config["training"]["seed"] == 2
    assert config["training"]["num_epochs"] == 1
    first, second = (
        json.loads((out / "chapter" / f"seed-{seed}" / "history.json").read_text())
        for seed in (1, 2)
    )
    assert first["train_losses"] != second["train_losses"]  # the seed changes the training


@pytest.mark.slow
def test_the_lines_hold_what_the_run_folders_say(grid):
    out, results = grid
    for line in results.itertuples():
        metrics = json.loads(
            (out / line.experiment / f"seed-{line.seed}" / "metrics.json").read_text()
        )
        assert line.test_accuracy == pytest.approx(100 * metrics["test"]["accuracy"])
    lora = results.loc[results["experiment"] == "lora", "trainable_parameters"]
    # gpt2-nano: rank-16 A and B beside 6 linear layers in each of 3 blocks, and beside the head
    assert (lora == 3 * 16 * (4 * (48 + 48) + 2 * (48 + 192)) + 16 * (48 + 2)).all()
    assert results.loc[results["experiment"] == "tfidf", "training_minutes"].isna().all()
    on_disk = pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(on_disk, results, check_dtype=False)
    assert (out / "results.png").stat().st_size > 0 and (out / "results.pdf").is_file()


@pytest.mark.slow
def test_a_baseline_on_a_fixed_split_does_not_depend_on_the_seed(grid):
    _, results = grid
    tfidf = results[results["experiment"] == "tfidf"]
    assert tfidf["test_accuracy"].nunique() == 1


@pytest.mark.slow
def test_rows_already_run_are_read_not_run_again(grid, smoke_data, monkeypatch):
    out, results = grid

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(experiments, "fine_tune", must_not_train)
    plan = run_experiments(smoke_data, out, ROWS, [1, 2], "smoke", QUICK, dry_run=True)
    assert plan["done"].all() and "0 of 10 runs to do, about 0.0 minutes" in format_plan(plan)
    again = run_experiments(smoke_data, out, ROWS, [1, 2], "smoke", QUICK, progress=False)
    pd.testing.assert_frame_equal(again, results)


@pytest.mark.slow
def test_a_run_made_with_other_settings_is_not_taken_for_the_one_asked(grid, smoke_data, tmp_path):
    out, _ = grid
    run = tmp_path / "chapter" / "seed-1"
    shutil.copytree(out / "chapter" / "seed-1", run)  # trained for one epoch
    other = run_experiments(
        smoke_data, tmp_path, ["chapter", "tfidf"], [1], "smoke", progress=False
    )
    assert other["status"].tolist() == ["failed", "ok"]
    assert other.loc[0, "error"] == (
        f"{run} was run with num_epochs 1, not 5: add --redo to run it again"
    )
    assert json.loads((run / "config.json").read_text())["training"]["num_epochs"] == 1


def test_a_failed_run_is_recorded_and_the_others_go_on(smoke_data, tmp_path, monkeypatch):
    real = experiments.fine_tune

    def fail_on_seed_2(labeled, settings, *args, **kwargs):
        if settings.seed == 2:
            raise RuntimeError("out of memory")
        return real(labeled, settings, *args, **kwargs)

    monkeypatch.setattr(experiments, "fine_tune", fail_on_seed_2)
    lines = []
    results = run_experiments(
        smoke_data, tmp_path, ["chapter", "majority"], [1, 2], "smoke", QUICK, progress=False,
        log=lines.append,
    )  # fmt: skip
    assert results["status"].tolist() == ["ok", "failed", "ok", "ok"]
    assert results.loc[1, "error"] == "out of memory"
    assert any("chapter, seed 2: failed: out of memory" in line for line in lines)
    assert lines[-1].startswith("[4/4] majority, seed 2: validation ")
    assert lines[-1].endswith("; about 0.0 min left")
    assert not (tmp_path / "chapter" / "seed-2").exists()
    assert "| 1 (1 failed) |" in (tmp_path / "results.md").read_text()
    # once the cause is gone, the failed run is run and the finished ones are read
    monkeypatch.setattr(experiments, "fine_tune", real)
    again = run_experiments(
        smoke_data, tmp_path, ["chapter"], [1, 2], "smoke", QUICK, progress=False
    )
    assert (again["status"] == "ok").all()


def test_the_summary_gives_the_mean_and_sample_spread_of_each_row():
    results = pd.DataFrame({
        "experiment": ["chapter"] * 3 + ["first"],
        "status": ["ok"] * 4,
        "train_accuracy": [90.0, 92.0, 97.0, 80.0],
        "validation_accuracy": [95.0, 96.0, 97.0, 70.0],
        "test_accuracy": [94.0, 95.0, 99.0, 75.0],
        "training_minutes": [1.0, 1.0, 1.0, 2.0],
    })  # fmt: skip
    summary = summarize(results)
    test = np.array([94.0, 95.0, 99.0])
    assert summary.loc["chapter", "test_accuracy_mean"] == pytest.approx(test.mean())
    assert summary.loc["chapter", "test_accuracy_std"] == pytest.approx(test.std(ddof=1))
    assert summary.loc["chapter", "seeds"] == 3 and np.isnan(
        summary.loc["first", "test_accuracy_std"]
    )
    table = markdown_table(results)
    assert f"| {test.mean():.2f} ± {test.std(ddof=1):.2f} |" in table
    assert "| 75.00 |" in table  # one seed: no spread to show
    assert "96.63 / 99.33 / 95.00" in table and "78.46 / 80.54 / 75.00" in table


GB = 1e9
NOT_TRAINED = "a run was trained"


def must_not_train(*args, **kwargs):
    raise AssertionError(NOT_TRAINED)


def test_a_dry_run_plans_every_row_and_leaves_out_what_would_not_fit(
    smoke_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(experiments, "available_memory", lambda device: 24 * GB)
    monkeypatch.setattr(experiments, "fine_tune", must_not_train)
    lines = []
    plan = run_experiments(
        smoke_data,
        tmp_path / "out",
        seeds=[1, 2],
        profile="book",
        log=lines.append,
        dry_run=True,
    )  # fmt: skip (the book's sizes, estimated on the smoke data)
    assert not (tmp_path / "out").exists()  # nothing runs, nothing is written
    assert len(plan) == 2 * len(EXPERIMENTS) and not plan["done"].any()
    rows = plan.set_index(["experiment", "seed"])
    assert not rows.loc[("gpt2-xl_all", 1), "fits"] and rows.loc[("gpt2-xl_all", 1), "peak_gb"] > 24
    assert rows.loc[("chapter", 2), "fits"] and rows.loc[("chapter", 2), "peak_gb"] < 2
    assert (plan["fits"] == (plan["peak_gb"].fillna(0) <= HEADROOM * 24)).all()
    assert plan.loc[plan["experiment"] == "tfidf", "estimated_minutes"].isna().all()
    left_out = [line for line in lines if line.startswith("left out")]
    assert len(left_out) == plan.loc[~plan["fits"], "experiment"].nunique()  # a line per row
    peak = rows.loc[("gpt2-xl_all", 1), "peak_gb"]
    assert (
        f"left out gpt2-xl_all: it needs about {peak:.1f} GB of memory at its peak and this "
        "machine has 24.0 GB available"
    ) in left_out
    text = format_plan(plan).splitlines()
    assert len(text) == len(plan) + 2  # a header, a line per run, what is to do
    to_do = plan[plan["fits"]]
    minutes = to_do["estimated_minutes"].sum()
    assert text[-1] == f"{len(to_do)} of {len(plan)} runs to do, about {minutes:.1f} minutes"


def test_a_named_row_that_would_not_fit_is_refused_before_anything_runs(
    smoke_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(experiments, "available_memory", lambda device: 8 * GB)
    monkeypatch.setattr(experiments, "fine_tune", must_not_train)
    with pytest.raises(ConfigError) as refusal:
        run_experiments(smoke_data, tmp_path / "out", ["tfidf", "gpt2-xl_all"], profile="book")
    assert not (tmp_path / "out").exists()
    message = str(refusal.value)
    assert message.startswith("experiment gpt2-xl_all needs about ") and "\n" not in message
    assert "GB of memory at its peak and this machine has 8.0 GB available" in message


def test_the_plan_holds_each_runs_settings_and_estimate(smoke_data, tmp_path):
    plan = plan_experiments(smoke_data, tmp_path, ["chapter", "lora"], [5, 6], "smoke", QUICK)
    assert [(run.experiment.name, run.seed) for run in plan] == [
        ("chapter", 5), ("chapter", 6), ("lora", 5), ("lora", 6)
    ]  # fmt: skip
    lora = plan[3]
    assert lora.settings.trainable == "lora" and lora.settings.seed == 6
    assert lora.settings.num_epochs == 1 and lora.run_dir == tmp_path / "lora" / "seed-6"
    assert lora.estimate is plan[2].estimate and lora.fits and not lora.done  # memory unknown
    assert 0 < lora.minutes == lora.estimate.minutes


def test_rows_too_big_are_recorded_in_the_results_before_the_first_run(
    smoke_data, tmp_path, monkeypatch
):
    ends = plan_experiments(smoke_data, tmp_path, ["chapter", "gpt2-xl_all"], [1], "smoke", QUICK)
    available = sum(run.estimate.peak_bytes for run in ends) / 2 / HEADROOM  # between the two
    plan = plan_experiments(smoke_data, tmp_path, None, [1], "smoke", QUICK, available=available)
    too_big = [run for run in plan if not run.fits]
    assert too_big and "gpt2-xl_all" in {run.experiment.name for run in too_big}
    monkeypatch.setattr(experiments, "available_memory", lambda device: available)
    seen = []

    def first_run_reads_the_results(labeled, settings, run_dir, *args, **kwargs):
        seen.append(pd.read_csv(tmp_path / "results.csv"))
        raise RuntimeError("stopped")

    monkeypatch.setattr(experiments, "fine_tune", first_run_reads_the_results)
    results = run_experiments(smoke_data, tmp_path, None, [1], "smoke", QUICK, progress=False)
    before = seen[0]
    assert before["experiment"].tolist() == [run.experiment.name for run in too_big]
    assert (before["status"] == "too big").all()
    for line, run in zip(before.itertuples(), too_big, strict=True):
        assert line.peak_gb == pytest.approx(run.estimate.peak_bytes / GB)
        assert line.error == (
            f"it needs about {run.estimate.peak_bytes / GB:.1f} GB of memory at its peak and "
            f"this machine has {available / GB:.1f} GB available"
        )
    assert results["experiment"].tolist() == list(EXPERIMENTS)  # in the table's order
    statuses = results.set_index("experiment")["status"]
    assert statuses[[run.experiment.name for run in too_big]].eq("too big").all()
    assert statuses[["majority", "tfidf"]].eq("ok").all() and statuses["chapter"] == "failed"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "results.csv"), results, check_dtype=False)
    assert "| gpt2-xl, every layer; here gpt2-nano-xl | 0 (1 too big) |" in markdown_table(results)
    labels = [label.get_text() for label in plot_experiments(results).axes[0].get_xticklabels()]
    assert "gpt2-xl_all (too big)" in labels and "chapter" in labels


def test_the_smoke_profile_plans_small_stand_ins_for_gpt2s_sizes(smoke_data, tmp_path):
    rows = ["chapter", "gpt2-medium", "gpt2-large", "gpt2-xl"]
    smoke = plan_experiments(smoke_data, tmp_path, rows, profile="smoke")
    book = plan_experiments(smoke_data, tmp_path, rows, profile="book")
    assert [run.settings.model for run in book] == ["gpt2-small", *rows[1:]]
    assert [run.settings.model for run in smoke] == [
        "gpt2-nano", "gpt2-nano-medium", "gpt2-nano-large", "gpt2-nano-xl"
    ]  # fmt: skip
    weights = [run.estimate.memory["parameters"] for run in smoke]
    assert weights == sorted(set(weights))  # growing, as GPT-2's sizes do
    assert weights[-1] < book[0].estimate.memory["parameters"] / 10  # below a tenth of gpt2-small
    assert max(run.estimate.peak_bytes for run in smoke) < GB


@pytest.mark.slow
def test_the_table_names_the_model_that_stood_in(smoke_data, tmp_path):
    results = run_experiments(
        smoke_data, tmp_path, ["chapter", "gpt2-medium"], [1], "smoke", QUICK, progress=False
    )
    assert results["model"].tolist() == ["gpt2-nano", "gpt2-nano-medium"]
    table = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "| gpt2-medium | gpt2-medium (355M); here gpt2-nano-medium |" in table
    assert "| chapter | the chapter's settings |" in table
