"""The book's experiment table by one call: rows, seeds, baselines, skipping, failures, tables."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from gptclassifier.cli import main
from gptclassifier.data.sms import load_data
from gptclassifier.errors import ConfigError
from gptclassifier.experiments import grid as experiments
from gptclassifier.experiments.book_table import EXPERIMENTS, choose_experiments
from gptclassifier.experiments.grid import markdown_table, run_experiments, summarize
from gptclassifier.runs import load_run
from gptclassifier.settings import TrainSettings

QUICK = {"num_epochs": 1}
ROWS = ["chapter", "lora", "mean", "majority", "tfidf"]


@pytest.fixture(scope="module")
def practice():
    """Return the practice data set."""
    return load_data(profile="smoke")


@pytest.fixture(scope="module")
def grid(practice, tmp_path_factory):
    """Run five rows over two seeds once, in the smoke profile; return the folder and lines."""
    out = tmp_path_factory.mktemp("grid")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPTCLASSIFIER_CACHE", str(tmp_path_factory.mktemp("cache")))
        results = run_experiments(practice, out, ROWS, [1, 2], "smoke", QUICK, progress=False)
    return out, results


def test_every_row_of_the_table_is_a_valid_run():
    for experiment in EXPERIMENTS.values():
        TrainSettings(**experiment.settings)  # a typo in a setting name would raise here
    assert [e.book_row for e in EXPERIMENTS.values() if e.book_row] == [
        *range(1, 15), *range(16, 20)
    ]  # fmt: skip
    # The book's own finding: ignore_index on class labels changes nothing.
    assert EXPERIMENTS["ignore_index"].book == EXPERIMENTS["chapter"].book


def test_unknown_rows_are_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="unknown experiment 'lore'.*lora"):
        choose_experiments(["chapter", "lore"])
    assert [e.name for e in choose_experiments(["tfidf", "chapter"])] == ["chapter", "tfidf"]
    assert len(choose_experiments(None)) == len(EXPERIMENTS)


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


def test_a_baseline_on_a_fixed_split_does_not_depend_on_the_seed(grid):
    _, results = grid
    tfidf = results[results["experiment"] == "tfidf"]
    assert tfidf["test_accuracy"].nunique() == 1


def test_rows_already_run_are_read_not_run_again(grid, practice, monkeypatch):
    out, results = grid

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(experiments, "fine_tune", must_not_train)
    again = run_experiments(practice, out, ROWS, [1, 2], "smoke", QUICK, progress=False)
    pd.testing.assert_frame_equal(again, results)


def test_a_run_made_with_other_settings_is_not_taken_for_the_one_asked(grid, practice, tmp_path):
    out, _ = grid
    run = tmp_path / "chapter" / "seed-1"
    shutil.copytree(out / "chapter" / "seed-1", run)  # trained for one epoch
    other = run_experiments(practice, tmp_path, ["chapter", "tfidf"], [1], "smoke", progress=False)
    assert other["status"].tolist() == ["failed", "ok"]
    assert other.loc[0, "error"] == (
        f"{run} was run with num_epochs 1, not 5: add --redo to run it again"
    )
    assert json.loads((run / "config.json").read_text())["training"]["num_epochs"] == 1


def test_a_failed_run_is_recorded_and_the_others_go_on(practice, tmp_path, monkeypatch):
    real = experiments.fine_tune

    def fail_on_seed_2(labeled, settings, *args, **kwargs):
        if settings.seed == 2:
            raise RuntimeError("out of memory")
        return real(labeled, settings, *args, **kwargs)

    monkeypatch.setattr(experiments, "fine_tune", fail_on_seed_2)
    lines = []
    results = run_experiments(
        practice, tmp_path, ["chapter", "majority"], [1, 2], "smoke", QUICK, progress=False,
        log=lines.append,
    )  # fmt: skip
    assert results["status"].tolist() == ["ok", "failed", "ok", "ok"]
    assert results.loc[1, "error"] == "out of memory"
    assert any("chapter, seed 2: failed: out of memory" in line for line in lines)
    assert not (tmp_path / "chapter" / "seed-2").exists()
    assert "| 1 (1 failed) |" in (tmp_path / "results.md").read_text()
    # once the cause is gone, the failed run is run and the finished ones are read
    monkeypatch.setattr(experiments, "fine_tune", real)
    again = run_experiments(practice, tmp_path, ["chapter"], [1, 2], "smoke", QUICK, progress=False)
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


def test_the_command_runs_rows_prints_the_table_and_reads_them_back(tmp_path, capsys):
    args = ["experiments", "--profile", "smoke", "--rows", "majority,tfidf", "--seeds", "3,4"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| tfidf | baseline: TF-IDF and logistic regression | 2 |" in out
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert out.count("already run") == 0 and capsys.readouterr().out.count("already run") == 4


def test_the_command_exits_1_when_a_run_failed(tmp_path, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(experiments, "baseline_metrics", fail)
    args = ["experiments", "--profile", "smoke", "--rows", "tfidf", "--out", str(tmp_path)]
    assert main(args) == 1
    assert capsys.readouterr().err == (
        f"gptclassifier: 1 of 1 runs failed, see {tmp_path / 'results.csv'}\n"
    )


def test_an_unknown_row_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "x"
    args = ["experiments", "--profile", "smoke", "--rows", "chapter,lore", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("gptclassifier: error: unknown experiment 'lore'") and err.count("\n") == 1
    )
    assert not out.exists()


def test_seeds_must_be_whole_numbers(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["experiments", "--seeds", "1,two", "--out", str(tmp_path / "x")])
    assert exited.value.code == 2
    assert "seeds are whole numbers, not '1,two'" in capsys.readouterr().err


def test_ctrl_c_keeps_the_runs_finished_so_far_and_says_so(tmp_path, capsys, monkeypatch):
    real = experiments.baseline_metrics

    def ctrl_c_on_the_second(name, *args, **kwargs):
        if name == "tfidf":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(experiments, "baseline_metrics", ctrl_c_on_the_second)
    args = ["experiments", "--profile", "smoke", "--rows", "majority,tfidf", "--out", str(tmp_path)]
    assert main(args) == 130
    assert capsys.readouterr().err == (
        f"gptclassifier: interrupted; the runs finished so far are kept in {tmp_path}; "
        "the same command goes on from there\n"
    )
    assert (tmp_path / "majority" / "seed-123" / "metrics.json").is_file()
    assert not (tmp_path / "tfidf").exists()
