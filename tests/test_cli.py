"""The command line: each subcommand, its messages, and its exit status on user mistakes."""

import csv
import io
import json
import re
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

from gptclassifier.cli import main
from gptclassifier.experiments import grid

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
    assert "50 messages (book parsing)" in printed
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
        (["prepare", "--data", "."], ". is a folder: give the data file or its zip archive"),
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


BAD_DATA_FILES = [
    ("sms.txt", SMS + "spam but no tab\n", r"sms.txt: line 51 has no tab: 'spam but no tab'"),
    ("sms.txt", SMS + "\nham\tafter a blank line\n", r"sms.txt: line 51 is blank"),
    ("sms.txt", SMS + "junk\tunknown label\n", r"sms.txt: line 51 has label 'junk'"),
    (
        "sms.txt",
        SMS.encode() + b"ham\tcaf\xe9\n",
        r"sms.txt: line 51 is not valid UTF-8 \(byte 0xe9\)",
    ),
    (
        "sms.txt",
        "ham\tonly ham\n" * 20,
        r"sms.txt: balancing needs at least two classes, found 1: 'ham'",
    ),
    ("sms.txt", "ham\thi\nspam\twin\n", r"sms.txt: 2 rows are too few to split"),
    (
        "t.csv",
        "Label,Message\nham,hi\n",
        r"t.csv: no column named 'Text' \(columns: Label, Message\)",
    ),
    ("t.csv", "Text\nhi\n", r"t.csv: no column named 'Label'"),
    ("t.csv", "Label,Text\nham,hi\n,no label\n", r"t.csv: data row 2 has no label"),
    (
        "t.csv",
        b"Label,Text\nham,hi\nspam,\xff\n",
        r"t.csv: line 3 is not valid UTF-8 \(byte 0xff\)",
    ),
]


@pytest.mark.parametrize("command", ["prepare", "train"])
@pytest.mark.parametrize(("name", "content", "message"), BAD_DATA_FILES)
def test_bad_data_files_exit_2_naming_file_and_line_and_write_nothing(
    tmp_path, capsys, command, name, content, message
):
    data = tmp_path / name
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    args = [command, "--profile", "smoke", "--data", str(data), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptclassifier: error: ") and err.count("\n") == 1
    assert re.search(message, err), err
    assert {path.name for path in tmp_path.iterdir()} <= {name, "cache"}  # no output, no parts


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="no such file"):
        main(["--debug", "prepare", "--data", str(tmp_path / "missing.tsv")])


def run(command, cwd):
    """Run a command with the smoke profile and return the completed process."""
    env = {"GPTCLASSIFIER_PROFILE": "smoke", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
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


def test_quiet_training_prints_the_result_only_and_no_bar_off_a_terminal(tmp_path, capsys):
    args = ["train", "--profile", "smoke", "--epochs", "1", "--out"]
    assert main([*args, str(tmp_path / "loud")]) == 0
    loud = capsys.readouterr()
    assert "data: practice" in loud.out and "Ep 1 (Step 000000)" in loud.out
    assert "\r" not in loud.err + loud.out, "no progress bar when the output is not a terminal"
    assert main([*args, str(tmp_path / "quiet"), "-q"]) == 0
    quiet = capsys.readouterr().out
    assert "data:" not in quiet and "Ep 1" not in quiet
    assert "Test accuracy:" in quiet


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


def test_the_experiments_options_reach_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--profile", "smoke", "--out", str(out), "--no-progress", "--epochs", "1"]
    options = [
        "--trainable", "lora", "--lora-rank", "4", "--lora-alpha", "8", "--pooling", "mean",
        "--padding", "context", "--no-causal-mask", "--ignore-index", "50256",
        "--weights", "random",
    ]  # fmt: skip
    assert main([*args, *options]) == 0
    assert "the chapter's loop runs every block on every step" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    training = config["training"]
    assert (training["trainable"], training["lora_rank"], training["lora_alpha"]) == ("lora", 4, 8)
    assert (training["pooling"], training["padding"], training["causal_mask"]) == (
        "mean", "context", False
    )  # fmt: skip
    assert (training["ignore_index"], training["weights"]) == (50256, "random")
    assert config["max_length"] == 128  # gpt2-nano's context
    assert config["parameters"]["trainable"] == 3 * 4 * (4 * 96 + 2 * 240) + 4 * 50


def test_evaluate_prints_the_metrics_of_a_split(trained_run, capsys):
    assert main(["evaluate", "--model", str(trained_run), "--split", "validation"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((trained_run / "metrics.json").read_text())["validation"]
    assert printed.startswith(f"validation: {metrics['num_examples']} messages")
    assert f"accuracy: {metrics['accuracy']:.2%}" in printed


@pytest.mark.parametrize("split", ["train", "test"])
def test_evaluate_json_is_what_metrics_json_holds(trained_run, capsys, split):
    assert main(["evaluate", "--model", str(trained_run), "--split", split, "--json", "-q"]) == 0
    metrics = json.loads((trained_run / "metrics.json").read_text())[split]
    assert json.loads(capsys.readouterr().out) == metrics


def classified(trained_run, capsys, *options) -> list[dict]:
    """Return `classify`'s TSV rows for MESSAGES as dicts, with the probabilities as floats."""
    assert main(["classify", "--model", str(trained_run), *MESSAGES, *options]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out), delimiter="\t"))
    return [row | {name: float(row[name]) for name in ("P(ham)", "P(spam)")} for row in rows]


MESSAGES = ["WIN a prize now!", "see you at 7 😊", 'a "quoted"\ttab']


def test_classify_prints_a_header_every_probability_and_the_text(trained_run, capsys):
    rows = classified(trained_run, capsys)
    assert [row["text"] for row in rows] == MESSAGES
    for row in rows:
        assert row["P(ham)"] + row["P(spam)"] == pytest.approx(1, abs=2e-6)
        assert row["label"] == max(("ham", "spam"), key=lambda name: row[f"P({name})"])


def test_classify_reads_stdin_and_skips_blank_lines(trained_run, capsys, monkeypatch):
    expected = classified(trained_run, capsys)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join([MESSAGES[0], "", *MESSAGES[1:]])))
    assert main(["classify", "--model", str(trained_run), "-"]) == 0
    out = capsys.readouterr().out
    assert list(csv.DictReader(io.StringIO(out), delimiter="\t"))[2]["text"] == MESSAGES[2]
    assert len(out.splitlines()) == 1 + len(expected)


def test_classify_jsonl_has_the_same_numbers_as_tsv(trained_run, capsys):
    rows = classified(trained_run, capsys)
    assert main(["classify", "--model", str(trained_run), *MESSAGES, "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == MESSAGES
    for line, row in zip(lines, rows, strict=True):
        assert line["label"] == row["label"]
        assert line["probabilities"]["spam"] == pytest.approx(row["P(spam)"], abs=1e-6)


def test_classify_threshold_calls_spam_from_the_spam_probability(trained_run, capsys):
    rows = classified(trained_run, capsys)
    spam = sorted(row["P(spam)"] for row in rows)
    threshold = (spam[0] + spam[1]) / 2  # between the two least spammy messages
    relabelled = classified(trained_run, capsys, "--threshold", str(threshold))
    assert [row["label"] for row in relabelled] == [
        "spam" if row["P(spam)"] >= threshold else "ham" for row in rows
    ]
    assert sum(row["label"] == "spam" for row in relabelled) == len(rows) - 1


@pytest.mark.parametrize("value", ["0", "1", "1.5", "x"])
def test_classify_refuses_a_threshold_outside_0_to_1(trained_run, capsys, value):
    with pytest.raises(SystemExit) as exit:
        main(["classify", "--model", str(trained_run), "hi", "--threshold", value])
    assert exit.value.code == 2
    assert f"a probability between 0 and 1, not '{value}'" in capsys.readouterr().err


def test_a_device_this_machine_lacks_is_refused_in_one_line(trained_run, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["classify", "--model", str(trained_run), "hi", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptclassifier: error: --device cuda: this machine has no cuda")


@pytest.mark.parametrize(
    "command", ["prepare", "train", "experiments", "evaluate", "classify", "export"]
)
def test_every_command_has_a_description_examples_and_quiet(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    shown = capsys.readouterr().out
    assert "-q, --quiet" in shown
    examples = shown.split("examples:\n", 1)[1].splitlines()
    assert examples and all(
        line.startswith(f"  gptclassifier {command}") or "| gptclassifier" in line
        for line in examples
    )


@pytest.mark.parametrize(("profile", "lr"), [("book", "5e-05"), ("smoke", "0.001")])
def test_help_shows_the_chosen_profiles_defaults(capsys, monkeypatch, profile, lr):
    monkeypatch.delenv("GPTCLASSIFIER_PROFILE", raising=False)
    with pytest.raises(SystemExit):
        main(["train", "--profile", profile, "--help"])
    assert f"(default: {lr}, {profile} profile)" in " ".join(capsys.readouterr().out.split())
    monkeypatch.setenv("GPTCLASSIFIER_PROFILE", profile)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert f"(default: {lr}, {profile} profile)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["classify", "--model", "{run}", "   "], "cannot classify an empty message"),
        (["classify", "--model", "{missing}", "hi"], "no such run directory"),
        (["evaluate", "--model", "{missing}"], "no such run directory"),
        (["export", "{missing}", "--to", "{out}"], "no such run directory"),
        (
            ["export", "{run}", "--to", "{run}"],
            "already exists: choose another --out or add --force",
        ),
    ],
)
def test_run_commands_report_mistakes_in_one_line(trained_run, tmp_path, capsys, args, message):
    paths = {
        "run": str(trained_run),
        "missing": str(tmp_path / "missing"),
        "out": str(tmp_path / "out"),
    }
    assert main([arg.format(**paths) for arg in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptclassifier: error: ") and message in err and err.count("\n") == 1


def test_export_writes_a_run_that_needs_no_base(trained_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "standalone"
    assert main(["export", str(trained_run), "--to", str(out)]) == 0
    size = (out / "model.safetensors").stat().st_size
    assert capsys.readouterr().out == (
        f"exported {trained_run} to {out}: model.safetensors holds every parameter "
        f"({size / 1e6:,.1f} MB)\n"
    )
    assert size > 4 * (trained_run / "model.safetensors").stat().st_size
    kept = sorted(path.name for path in trained_run.iterdir())
    assert sorted(path.name for path in out.iterdir()) == kept
    assert json.loads((out / "config.json").read_text())["saved_parameters"] == "all"
    assert main(["classify", "--model", str(trained_run), "WIN a prize now!"]) == 0
    original = capsys.readouterr().out
    # Without its base model at hand the run itself cannot load, and the export still does.
    monkeypatch.setattr("gptclassifier.runs.rebuild_base_model", lambda *args: 1 / 0)
    assert main(["classify", "--model", str(out), "WIN a prize now!"]) == 0
    assert capsys.readouterr().out == original
    with pytest.raises(ZeroDivisionError):
        main(["classify", "--model", str(trained_run), "WIN a prize now!"])


def test_export_to_transformers_refuses_a_pooling_change_unless_allowed(
    trained_run, tmp_path, capsys
):
    out = tmp_path / "hf"
    args = ["export", str(trained_run), "--to", str(out), "--format", "transformers", "-q"]
    assert main(args) == 2
    printed = capsys.readouterr()
    agreement = re.search(r"on the run's \d+ test messages .+ on \d+ \(\d+\.\d%\)", printed.out)
    assert agreement, printed.out  # shown even with -q: it is a caveat on the result
    assert printed.err.count("\n") == 1 and "add --allow-pooling-change" in printed.err
    assert agreement.group(0) in printed.err and not out.exists()
    assert main([*args, "--allow-pooling-change"]) == 0
    assert agreement.group(0) in capsys.readouterr().out
    assert agreement.group(0) in (out / "README.md").read_text(encoding="utf-8")


def test_train_is_the_chapter_by_default_and_the_fastest_way_on_request(tmp_path, capsys):
    base = ["train", "--profile", "smoke", "--no-progress", "--epochs", "1"]
    for name, way in (("default", []), ("chapter", ["--chapter"]), ("fast", ["--fast"])):
        assert main([*base, "--out", str(tmp_path / name), *way]) == 0
    default, chapter, fast = (
        json.loads((tmp_path / name / "config.json").read_text())
        for name in ("default", "chapter", "fast")
    )
    chosen = [
        (run["training"]["loop"], run["pooling"], run["precision"], run["training"]["bucket"])
        for run in (default, chapter)
    ]
    assert chosen == [("fast", "last", "float32", False), ("chapter", "last", "float32", False)]
    assert (default["training"]["parsing"], default["max_length"]) == (
        "book",
        chapter["max_length"],
    )
    assert (fast["training"]["loop"], fast["pooling"], fast["training"]["bucket"]) == (
        "fast", "flexible", True,
    )  # fmt: skip
    assert fast["precision"] in ("float32", "bfloat16")
    printed = capsys.readouterr().out
    assert "last pooling, fast loop, float32" in printed
    assert "last pooling, chapter loop, float32" in printed
    assert "flexible pooling, fast loop" in printed
    assert printed.count("fast loop ready in") == 2  # the frozen blocks' one pass, timed
    assert "the chapter's loop: every block runs on every step" in printed


def test_chapter_and_fast_cannot_be_combined(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--out", "x", "--chapter", "--fast"])
    assert stopped.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_default_way_repeats_the_chapters_loop_in_float64(tmp_path, capsys):
    # In float64 the two ways differ only by rounding far below what they print, so their
    # histories agree to 1e-9 and their progress lines to the last digit.
    base = ["train", "--profile", "smoke", "--no-progress", "--epochs", "2", "--precision"]
    printed = {}
    for name, way in (("chapter", ["--chapter"]), ("default", [])):
        assert main([*base, "float64", "--out", str(tmp_path / name), *way]) == 0
        lines = capsys.readouterr().out.splitlines()
        printed[name] = [line for line in lines if line.startswith(("Ep ", "Training accuracy"))]
    assert printed["default"] == printed["chapter"] and len(printed["chapter"]) > 4
    chapter, default = (
        json.loads((tmp_path / name / "history.json").read_text())
        for name in ("chapter", "default")
    )
    for name in ("train_losses", "val_losses", "train_accs", "val_accs"):
        assert default[name] == pytest.approx(chapter[name], rel=1e-9), name
    metrics = [
        json.loads((tmp_path / name / "metrics.json").read_text())
        for name in ("chapter", "default")
    ]
    assert metrics[0] == metrics[1]


@pytest.mark.parametrize(
    "way", [[], ["--fast", "--precision", "bfloat16"]], ids=["default", "fast"]
)
def test_evaluate_reproduces_the_runs_metrics(tmp_path, capsys, way):
    # A run is evaluated as it was trained: its pooling, padding, loop and precision. Rounding
    # in another batch shape may move one message near the boundary, no more.
    out = tmp_path / "run"
    base = ["train", "--profile", "smoke", "--no-progress", "--epochs", "2", "--out", str(out)]
    assert main([*base, *way]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    for split in ("validation", "test"):
        capsys.readouterr()
        assert main(["evaluate", "--model", str(out), "--split", split]) == 0
        printed = capsys.readouterr().out.splitlines()
        ours = [int(count) for line in printed[-2:] for count in line.split()]
        theirs = [count for row in saved[split]["confusion_matrix"] for count in row]
        moved = sum(abs(a - b) for a, b in zip(ours, theirs, strict=True))
        assert moved <= 2, (split, ours, theirs)  # one message moved changes two cells


def earlier_run(folder: Path) -> dict[str, bytes]:
    """Create a stand-in for an earlier run directory; return its files' contents."""
    folder.mkdir()
    contents = {"model.safetensors": b"earlier weights", "config.json": b"{}"}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return contents


@pytest.mark.parametrize("stage", ["train_classifier", "_save_plots"])
def test_ctrl_c_keeps_the_earlier_run_and_says_so(tmp_path, monkeypatch, capsys, stage):
    out = tmp_path / "run"
    kept = earlier_run(out)

    def press_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(f"gptclassifier.fine_tune.{stage}", press_ctrl_c)
    args = ["train", "--profile", "smoke", "--out", str(out), "--force", "--no-progress"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert err == f"gptclassifier: interrupted; nothing was written; {out} is kept as it was\n"
    assert {path.name: path.read_bytes() for path in out.iterdir()} == kept
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


@pytest.mark.slow
def test_sigint_during_training_stops_cleanly(tmp_path):
    command = [sys.executable, "-m", "gptclassifier", "train", "--out", "run", "--epochs", "500"]
    env = {
        "GPTCLASSIFIER_PROFILE": "smoke", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    with subprocess.Popen(
        [*command, "--no-progress"], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # A suite started in the background inherits an ignored SIGINT; a user's Ctrl-C is not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as process:  # fmt: skip
        for line in process.stdout:
            if line.startswith("Ep 1 "):  # training has started
                break
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert (
        err.splitlines()[-1]
        == "gptclassifier: interrupted; nothing was written; run was not created"
    )
    assert "Traceback" not in err
    assert sorted(path.name for path in tmp_path.iterdir() if "run" in path.name) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "num_epochs must be a whole number of at least 1, not 0"),
        (["--lr", "-1"], "lr must be above 0"),
        (["--batch-size", "5000"], "the batch size of 5000 is more than the"),
        (["--lora-rank", "0"], "lora_rank must be a whole number of at least 1, not 0"),
    ],
)
def test_impossible_training_settings_exit_2_before_training(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", "--profile", "smoke", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_a_folder_the_system_refuses_exits_1_in_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "prepared"
    assert main(["prepare", "--profile", "smoke", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"gptclassifier: error: {out}") and err.count("\n") == 1


def test_commands_that_draw_nothing_do_not_import_matplotlib():
    check = "import sys, gptclassifier.cli; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# --- the experiments command ---------------------------------------------------------------


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

    monkeypatch.setattr(grid, "baseline_metrics", fail)
    args = ["experiments", "--profile", "smoke", "--rows", "tfidf", "--out", str(tmp_path)]
    assert main(args) == 1
    assert capsys.readouterr().err == (
        f"gptclassifier: 1 of 1 runs failed, see {tmp_path / 'results.csv'}\n"
    )


def test_dry_run_lists_every_run_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "experiments"
    args = ["experiments", "--profile", "smoke", "--out", str(out), "--dry-run", "-q"]
    assert main([*args, "--rows", "chapter,lora,tfidf", "--seeds", "1,2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["experiment", "seed", "minutes", "peak", "GB", "fits", "done"]
    assert [line.split()[:2] for line in lines[1:-1]] == [
        [name, seed] for name in ("chapter", "lora", "tfidf") for seed in ("1", "2")
    ]
    assert lines[-1].startswith("6 of 6 runs to do, about ")
    assert not out.exists()


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
    real = grid.baseline_metrics

    def ctrl_c_on_the_second(name, *args, **kwargs):
        if name == "tfidf":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(grid, "baseline_metrics", ctrl_c_on_the_second)
    args = ["experiments", "--profile", "smoke", "--rows", "majority,tfidf", "--out", str(tmp_path)]
    assert main(args) == 130
    assert capsys.readouterr().err == (
        f"gptclassifier: interrupted; the runs finished so far are kept in {tmp_path}; "
        "the same command goes on from there\n"
    )
    assert (tmp_path / "majority" / "seed-123" / "metrics.json").is_file()
    assert not (tmp_path / "tfidf").exists()


def test_the_command_line_needs_nothing_of_the_lab_extra():
    probe = (
        "import sys, gptclassifier.cli, gptclassifier.fine_tune, gptclassifier.export, "
        "gptclassifier.evaluation.inference, gptclassifier.experiments.grid; "
        "print(sorted({name.split('.')[0] for name in sys.modules} & "
        "{'ipywidgets', 'IPython', 'jupyterlab', 'ipykernel', 'playwright', 'transformers'}))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert shown.stdout.strip() == "[]"


# Garbage that only the collector can free (a cycle), which says when it is freed.
EXIT_SCRIPT = """
import os, sys
from gptclassifier.cli import skip_collection_at_exit
class Cycle:
    def __del__(self):
        os.write(1, b"collected")
cycle = Cycle()
cycle.itself = cycle
del cycle
if sys.argv[1] == "skip":
    skip_collection_at_exit()
"""


@pytest.mark.parametrize(("mode", "printed"), [("default", "collected"), ("skip", "")])
def test_the_command_line_skips_the_collection_at_exit(mode, printed):
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, mode], capture_output=True, text=True, check=True
    )
    assert done.stdout == printed
