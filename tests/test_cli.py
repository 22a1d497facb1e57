"""The command line: each subcommand, its messages, and its exit status on user mistakes."""

import io
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

from gptclassifier.cli import main

SMS = "".join(f"ham\tham message {i}\n" for i in range(40)) + "".join(
    f"spam\tWIN prize {i}\n" for i in range(10)
)


@pytest.fixture
def sms_file(tmp_path):
    """Return a small SMS-format file."""
    path = tmp_path / "messages.txt"
    path.write_text(SMS)
    return path


def test_prepare_writes_splits_and_prints_counts(sms_file, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert main(["prepare", "--data", str(sms_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "50 messages (exact parsing)" in printed
    assert "train" in printed and "validation" in printed
    train = pd.read_csv(out / "train.csv")
    assert train.columns.tolist() == ["Label", "Text"]
    assert set(train["Label"]) == {0, 1}
    assert (
        sum(len(pd.read_csv(out / f"{name}.csv")) for name in ("train", "validation", "test")) == 20
    )


def test_prepare_takes_a_users_table_with_several_classes(tmp_path, capsys):
    table = tmp_path / "reviews.csv"
    rows = [f"{label},review {i}" for i in range(12) for label in ("bad", "good", "meh")]
    table.write_text("mood,review\n" + "\n".join(rows) + "\n")
    out = tmp_path / "prepared"
    args = ["prepare", "--data", str(table), "--text-column", "review", "--label-column", "mood"]
    assert main([*args, "--out", str(out)]) == 0
    assert "bad  good  meh  total" in capsys.readouterr().out
    assert set(pd.read_csv(out / "train.csv")["Label"]) == {0, 1, 2}


def test_smoke_profile_uses_the_practice_set(tmp_path, capsys):
    assert main(["prepare", "--profile", "smoke", "--out", str(tmp_path / "p")]) == 0
    assert "data: practice" in capsys.readouterr().out


def test_book_profile_offline_warns_in_one_readable_block(tmp_path, capsys):
    assert main(["prepare", "--profile", "book", "--out", str(tmp_path / "p")]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: \n!!!!")
    assert "USING THE PRACTICE DATA SET" in captured.err
    assert "Traceback" not in captured.err
    assert "data: practice" in captured.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prepare", "--data", "missing.tsv"], "missing.tsv: no such file"),
        (["prepare", "--profile", "book"], "could not download sms+spam+collection.zip"),
    ],
)
def test_user_mistakes_print_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPTCLASSIFIER_STRICT", "1")
    assert main([*args, "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptclassifier: error: ") and message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="no such file"):
        main(["--debug", "prepare", "--data", str(tmp_path / "missing.tsv")])


def run(command, cwd):
    """Run a command with the smoke profile and return the completed process."""
    env = {"GPTCLASSIFIER_PROFILE": "smoke", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_python_dash_m_and_the_console_script(tmp_path, sms_file):
    script = Path(sysconfig.get_path("scripts")) / "gptclassifier"
    for command in ([sys.executable, "-m", "gptclassifier"], [str(script)]):
        done = run([*command, "prepare", "--data", str(sms_file), "--out", "out"], tmp_path)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "out" / "train.csv").is_file()


def test_a_bad_option_value_exits_2_without_a_traceback(tmp_path):
    done = run([sys.executable, "-m", "gptclassifier", "prepare", "--parsing", "fast"], tmp_path)
    assert done.returncode == 2
    assert "invalid choice: 'fast'" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Train once with the command line in the smoke profile; return the run directory."""
    out = tmp_path_factory.mktemp("runs") / "smoke"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPTCLASSIFIER_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert main(["train", "--profile", "smoke", "--out", str(out), "--no-progress"]) == 0
    return out


def test_train_writes_the_model_and_metrics_of_every_split(trained_run):
    assert (trained_run / "model.safetensors").is_file()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(metrics) == {"train", "validation", "test"}


def test_train_refuses_to_overwrite_without_force(trained_run, capsys):
    before = (trained_run / "model.safetensors").stat().st_mtime_ns
    assert main(["train", "--profile", "smoke", "--out", str(trained_run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (trained_run / "model.safetensors").stat().st_mtime_ns == before


def test_train_overrides_reach_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--profile", "smoke", "--out", str(out), "--no-progress", "--epochs", "1"]
    assert main([*args, "--pooling", "flexible", "--trainable", "last_layer", "--lr", "0.01"]) == 0
    printed = capsys.readouterr().out
    assert "Training accuracy:" in printed and "Test accuracy:" in printed
    assert f"outputs in {out}" in printed
    training = json.loads((out / "config.json").read_text())["training"]
    assert (training["num_epochs"], training["pooling"]) == (1, "flexible")
    assert (training["trainable"], training["lr"]) == ("last_layer", 0.01)


def test_evaluate_prints_the_metrics_of_a_split(trained_run, capsys):
    assert main(["evaluate", "--model", str(trained_run), "--split", "validation"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((trained_run / "metrics.json").read_text())["validation"]
    assert printed.startswith(f"validation: {metrics['num_examples']} messages")
    assert f"accuracy: {metrics['accuracy']:.2%}" in printed


def test_classify_prints_label_probability_and_text(trained_run, capsys, monkeypatch):
    texts = ["WIN a prize now!", "see you at 7 😊"]
    assert main(["classify", "--model", str(trained_run), *texts]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[2] for line in lines] == texts
    assert all(line.split("\t")[0] in ("ham", "spam") for line in lines)
    assert all(0.5 <= float(line.split("\t")[1]) <= 1 for line in lines)

    monkeypatch.setattr("sys.stdin", io.StringIO("WIN a prize now!\n\nsee you at 7 😊\n"))
    assert main(["classify", "--model", str(trained_run), "-"]) == 0
    assert capsys.readouterr().out.splitlines() == lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["classify", "--model", "{run}", "   "], "cannot classify an empty message"),
        (["classify", "--model", "{missing}", "hi"], "no such run directory"),
        (["evaluate", "--model", "{missing}"], "no such run directory"),
    ],
)
def test_run_commands_report_mistakes_in_one_line(trained_run, tmp_path, capsys, args, message):
    paths = {"run": str(trained_run), "missing": str(tmp_path / "missing")}
    assert main([arg.format(**paths) for arg in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptclassifier: error: ") and message in err and err.count("\n") == 1


def test_train_is_fast_by_default_and_the_chapter_on_request(tmp_path, capsys):
    base = ["train", "--profile", "smoke", "--no-progress", "--epochs", "1"]
    assert main([*base, "--out", str(tmp_path / "fast")]) == 0
    assert main([*base, "--out", str(tmp_path / "chapter"), "--chapter"]) == 0
    fast, chapter = (
        json.loads((tmp_path / name / "config.json").read_text()) for name in ("fast", "chapter")
    )
    assert (fast["training"]["loop"], fast["pooling"], fast["training"]["bucket"]) == (
        "fast", "flexible", True,
    )  # fmt: skip
    assert fast["precision"] in ("float32", "bfloat16")
    assert (chapter["training"]["loop"], chapter["pooling"], chapter["precision"]) == (
        "chapter", "last", "float32",
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "flexible pooling, fast loop" in printed and "last pooling, chapter loop" in printed
