"""The `gptclassifier` command line: one subcommand per step of the chapter."""

import argparse
import atexit
import contextlib
import csv
import functools
import gc
import json
import sys
import textwrap
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from gptclassifier import __version__
from gptclassifier.data.sms import load_data
from gptclassifier.data.splits import SPLIT_NAMES, count_labels, prepare_splits, write_splits
from gptclassifier.errors import ConfigError, DataError, FallbackWarning, GptClassifierError
from gptclassifier.evaluation.inference import evaluate_run, probabilities_with_run
from gptclassifier.experiments.book_table import EXPERIMENTS, choose_experiments
from gptclassifier.export import FORMATS, export_run, export_transformers
from gptclassifier.locks import output_lock
from gptclassifier.progress import silent
from gptclassifier.runs import MODEL_FILE, ensure_run_dir_free
from gptclassifier.settings import (
    CHOICES,
    FASTEST,
    PROFILES,
    SETTING_NAMES,
    Profile,
    get_profile,
    train_settings,
)
from gptclassifier.training.device import DEVICES

EXAMPLES = {
    "prepare": """
  gptclassifier prepare --out data/prepared
  gptclassifier prepare --data SMSSpamCollection --parsing exact --out data/exact
  gptclassifier prepare --data reviews.csv --text-column review --label-column stars""",
    "train": """
  gptclassifier train --out runs/chapter                  # the chapter's fine-tuning
  gptclassifier train --out runs/fast --fast              # the fastest way, last real token
  gptclassifier train --out runs/bf16 --precision bfloat16 --device cpu
  gptclassifier train --out runs/lora --trainable lora --lora-rank 16 --epochs 3""",
    "experiments": """
  gptclassifier experiments --out experiments --dry-run   # every run's minutes and memory
  gptclassifier experiments --out experiments             # the rows that fit this machine
  gptclassifier experiments --out experiments --rows chapter,lora --seeds 123,124,125""",
    "evaluate": """
  gptclassifier evaluate --model runs/chapter
  gptclassifier evaluate --model runs/chapter --split validation --json""",
    "classify": """
  gptclassifier classify --model runs/chapter "WINNER! Claim your prize now" "See you at 7?"
  cat messages.txt | gptclassifier classify --model runs/chapter - --format jsonl
  gptclassifier classify --model runs/chapter - --threshold 0.9 < messages.txt""",
    "export": """
  gptclassifier export runs/chapter --to exported/chapter
  gptclassifier export runs/fast --to hf/fast --format transformers
  gptclassifier export runs/chapter --to hf/chapter --format transformers --allow-pooling-change""",
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Return the parser of every subcommand; help shows the defaults of the profile chosen."""
    parser = argparse.ArgumentParser(
        prog="gptclassifier",
        description="Fine-tune GPT-2 into a text classifier, as chapter 6 of Build a Large "
        "Language Model (From Scratch) does, and use it.",
        epilog="Run `gptclassifier COMMAND --help` for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    profile = _chosen_profile(argv)
    common = _common_options()
    sources = _source_options(profile)
    _add_prepare(commands, [common, sources], profile)
    _add_train(commands, [common, sources], profile)
    _add_experiments(commands, [common, sources], profile)
    _add_evaluate(commands, [common])
    _add_classify(commands, [common])
    _add_export(commands, [common])
    return parser


def _chosen_profile(argv: list[str] | None) -> Profile:
    """Return the profile that `--profile` in `argv`, else $GPTCLASSIFIER_PROFILE, chooses."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--profile", choices=list(PROFILES))
    chosen, _ = first.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        return get_profile(chosen.profile)
    except ConfigError:  # a wrong $GPTCLASSIFIER_PROFILE: commands say so when they run
        return PROFILES["book"]


def _command(commands, name: str, summary: str, parents, description: str = ""):
    """Add a subcommand with its one-line summary, a description and its examples."""
    description = description or summary[0].upper() + summary[1:] + "."
    return commands.add_parser(
        name, parents=parents, help=summary, description=textwrap.fill(description, 80),
        epilog="examples:" + EXAMPLES[name], formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip


def _common_options() -> argparse.ArgumentParser:
    """Return the options every command has: -q."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "-q", "--quiet", action="store_true", help="print only the result: no progress or log"
    )
    return options


def _setting(parser, profile: Profile, name: str, help: str, flag=None, **options) -> None:
    """Add the option of a TrainSettings field; its choices and default come from settings."""
    flag = flag or "--" + name.replace("_", "-")
    if name in CHOICES:
        options["choices"] = CHOICES[name]
    default = getattr(profile.training, name)
    parser.add_argument(
        flag, dest=name, help=f"{help} (default: {default}, {profile.name} profile)", **options
    )


def _device(parser: argparse.ArgumentParser) -> None:
    """Add --device."""
    parser.add_argument(
        "--device", choices=DEVICES, default="auto",
        help="where to compute; auto: CUDA, else Apple's MPS, else the CPU (default: auto)",
    )  # fmt: skip


def _source_options(profile: Profile) -> argparse.ArgumentParser:
    """Return the options that say which messages to read."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--profile", choices=list(PROFILES),
        help=f"book: the chapter's; smoke: seconds, offline (default: $GPTCLASSIFIER_PROFILE "
        f"or book; here: {profile.name})",
    )  # fmt: skip
    options.add_argument(
        "--data", type=Path,
        help="SMS Spam Collection file or zip, or a table with a header row (default: the "
        "download, cached; offline: the practice set, with a warning)",
    )  # fmt: skip
    _setting(options, profile, "parsing", "book: the chapter's pandas read; exact: every line")
    options.add_argument("--text-column", default="Text", help="text column of a table")
    options.add_argument("--label-column", default="Label", help="label column of a table")
    return options


def _add_prepare(commands, parents, profile: Profile) -> None:
    """Add `prepare`: balance and split the data into CSV files."""
    prepare = _command(commands, "prepare", "balance and split the data into CSV files", parents)
    _setting(prepare, profile, "seed", "seed of sampling and splitting", type=int)
    prepare.add_argument(
        "--out", type=Path, default=Path("data/prepared"), help="output folder (data/prepared)"
    )
    prepare.set_defaults(handler=run_prepare)


def _add_train(commands, parents, profile: Profile) -> None:
    """Add `train`: every setting of TrainSettings, with the choices and defaults it declares."""
    train = _command(
        commands, "train", "fine-tune GPT-2 and save the run", parents,
        "Fine-tune GPT-2 as chapter 6 does (the same results, computed faster) and save the run: "
        "the trained weights, config.json, metrics.json, history.json, the splits and plots.",
    )  # fmt: skip
    _setting(train, profile, "model", "model size")
    _setting(train, profile, "weights", "pretrained or seeded random weights")
    _setting(train, profile, "trainable", "what to fine-tune")
    _setting(train, profile, "lora_rank", "with --trainable lora: the rank", type=int)
    _setting(train, profile, "lora_alpha", "with --trainable lora: the scale", type=float)
    _setting(train, profile, "pooling", "which token's logits classify; mean: their average")
    _setting(train, profile, "padding", "to the longest training message or the whole context")
    train.add_argument(
        "--no-causal-mask", dest="causal_mask", action="store_false", default=None,
        help="let every token attend to every other, padding included",
    )  # fmt: skip
    train.add_argument(
        "--ignore-index", type=int, help="a class index that the loss skips (default: none)"
    )
    way = train.add_mutually_exclusive_group()
    way.add_argument(
        "--chapter", action="store_true",
        help="the chapter's own loop: every block runs on every step (same results, slower)",
    )  # fmt: skip
    way.add_argument(
        "--fast", action="store_true",
        help="the fastest way: " + ", ".join(f"{k} {v}" for k, v in FASTEST.items()),
    )  # fmt: skip
    _setting(train, profile, "precision", "auto: bfloat16 where the hardware has it")
    _device(train)
    train.add_argument(
        "--bucket", action=argparse.BooleanOptionalAction, default=None,
        help="with flexible pooling: batch messages of similar length (default: with --fast)",
    )  # fmt: skip
    train.add_argument("--compile", action="store_true", help="torch.compile the trained part")
    _setting(train, profile, "num_epochs", "passes over the data", "--epochs", type=int)
    _setting(train, profile, "batch_size", "messages per step", type=int)
    _setting(train, profile, "lr", "AdamW learning rate", type=float)
    _setting(train, profile, "seed", "seed of sampling, shuffling and training", type=int)
    train.add_argument("--out", type=Path, required=True, help="run directory to create")
    train.add_argument("--force", action="store_true", help="replace an existing run directory")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bars only")
    train.set_defaults(handler=run_train)


def _add_experiments(commands, parents, profile: Profile) -> None:
    """Add `experiments`: the book's table over several seeds."""
    experiments = _command(
        commands, "experiments",
        "the book's table of design experiments, over several seeds, with baselines", parents,
        "Run rows of the book's table of design experiments (ch06 bonus material), each one "
        "setting changed from the chapter's, over several seeds; write results.csv, a Markdown "
        "table and a plot. Rows already run are read back, not run again.",
    )  # fmt: skip
    experiments.add_argument(
        "--rows", type=_names, metavar="NAME,...",
        help="experiments to run (default: every row that fits this machine's memory): "
        + ", ".join(EXPERIMENTS),
    )  # fmt: skip
    experiments.add_argument(
        "--seeds", type=_seeds, default=(123,), metavar="SEED,...",
        help="training seeds, one run of every row each (default: 123); one split: the chapter's",
    )  # fmt: skip
    _setting(experiments, profile, "num_epochs", "passes over the data", "--epochs", type=int)
    experiments.add_argument("--out", type=Path, required=True, help="folder for runs and tables")
    experiments.add_argument("--redo", action="store_true", help="run again rows already run")
    experiments.add_argument(
        "--dry-run", action="store_true",
        help="print every run's estimated minutes and peak memory, whether it fits this machine "
        "and whether it is done; run nothing",
    )  # fmt: skip
    experiments.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    experiments.set_defaults(handler=run_experiments_command)


def _add_evaluate(commands, parents) -> None:
    """Add `evaluate`: a saved run's metrics on one of its splits."""
    evaluate = _command(
        commands, "evaluate", "metrics of a saved run on one of its splits", parents,
        "Classify every message of one of a run's saved splits, computed as training did, and "
        "print accuracy, precision, recall and F1 of spam, and the confusion matrix.",
    )  # fmt: skip
    evaluate.add_argument("--model", type=Path, required=True, help="run directory")
    evaluate.add_argument("--split", choices=SPLIT_NAMES, default="test", help="default: test")
    evaluate.add_argument(
        "--json", action="store_true", help="print the metrics as JSON, as metrics.json holds them"
    )
    _device(evaluate)
    evaluate.set_defaults(handler=run_evaluate)


def _add_classify(commands, parents) -> None:
    """Add `classify`: new messages through a saved run."""
    classify = _command(
        commands, "classify", "classify new messages with a saved run", parents,
        "Classify new messages with a saved run, prepared as its training messages were. "
        "Prints a row per message: the label, every class's probability, and the text.",
    )  # fmt: skip
    classify.add_argument("--model", type=Path, required=True, help="run directory")
    classify.add_argument("texts", nargs="+", metavar="TEXT", help="messages; - reads stdin")
    classify.add_argument(
        "--format", choices=("tsv", "jsonl"), default="tsv",
        help="tsv: tab-separated with a header row; jsonl: one JSON object a line (default: tsv)",
    )  # fmt: skip
    classify.add_argument(
        "--threshold", type=_probability, metavar="P",
        help="call a message the second class (spam) when its probability is at least P "
        "(default: the likeliest class, as P = 0.5 does with two classes)",
    )  # fmt: skip
    _device(classify)
    classify.set_defaults(handler=run_classify)


def _add_export(commands, parents) -> None:
    """Add `export`: a run with every parameter, as a run folder or for transformers."""
    export = _command(
        commands, "export", "write a run with every parameter, as a run folder or for transformers",
        parents,
    )  # fmt: skip
    export.add_argument("run", type=Path, metavar="RUN", help="run directory")
    export.add_argument("--to", dest="out", type=Path, required=True, help="folder to create")
    export.add_argument(
        "--format", choices=FORMATS, default="run",
        help="run: a run folder that needs no base model (default); transformers: a folder "
        "that GPT2ForSequenceClassification.from_pretrained and pipeline() load",
    )  # fmt: skip
    export.add_argument(
        "--allow-pooling-change", action="store_true",
        help="with --format transformers: export a last-token run anyway (transformers reads each "
        "message's last real token); it first says on how many test messages the two agree",
    )  # fmt: skip
    export.add_argument("--force", action="store_true", help="replace an existing folder")
    export.set_defaults(handler=run_export)


def run_prepare(args: argparse.Namespace) -> None:
    """Write the three splits and print their class counts."""
    settings = train_settings(args.profile, parsing=args.parsing, seed=args.seed)
    with output_lock(args.out):  # before reading the data: a second writer is refused at once
        data = load_data(
            args.data, settings.parsing, args.profile, args.text_column, args.label_column
        )
        splits = prepare_splits(data, seed=settings.seed)
        paths = write_splits(splits, data, args.out, parsing=settings.parsing, seed=settings.seed)
    origin = data.provenance
    print(f"data: {origin.source} {origin.path}")
    print(f"{len(data.frame):,} messages ({settings.parsing} parsing), balanced and split:")
    print(count_labels(splits, data.classes).to_string())
    print(f"wrote {', '.join(str(path) for path in paths)}")


def run_train(args: argparse.Namespace) -> None:
    """Fine-tune, then print the accuracies and where the outputs are."""
    ensure_run_dir_free(args.out, args.force)
    overrides = {name: getattr(args, name, None) for name in SETTING_NAMES}
    if args.chapter:
        overrides["loop"] = "chapter"
    if args.fast:
        overrides |= {name: value for name, value in FASTEST.items() if overrides[name] is None}
    settings = train_settings(args.profile, **overrides)
    # Imported here: only training draws plots, and matplotlib takes half a second to import.
    from gptclassifier.fine_tune import fine_tune

    data = load_data(args.data, settings.parsing, args.profile, args.text_column, args.label_column)
    result = fine_tune(
        data, settings, args.out, args.profile, args.force, _shows_progress(args), _log(args),
        device=args.device,
    )  # fmt: skip
    seconds = result.history.seconds
    print(f"Training completed in {seconds / 60:.2f} minutes ({seconds:.1f} s).")
    print(f"Time by phase: {result.phases.summary()}.")
    titles = {"train": "Training", "validation": "Validation", "test": "Test"}
    accuracies = " | ".join(
        f"{titles[name]} accuracy: {result.metrics[name]['accuracy']:.2%}" for name in SPLIT_NAMES
    )
    print(accuracies)
    files = ", ".join(sorted(path.name for path in result.run_dir.iterdir()))
    print(f"outputs in {result.run_dir}: {files}")


def _names(text: str) -> list[str]:
    """Parse a comma-separated list of names."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _seeds(text: str) -> list[int]:
    """Parse a comma-separated list of whole-number seeds."""
    try:
        seeds = [int(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are whole numbers, not {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def run_experiments_command(args: argparse.Namespace) -> int:
    """Run the chosen experiments, print the table; status 1 when a run failed."""
    choose_experiments(args.rows)  # an unknown name fails here, before any data is read
    # Imported here: training draws plots, and matplotlib takes half a second to import.
    from gptclassifier.experiments.grid import TABLE_FILE, format_plan, run_experiments

    overrides = {"parsing": args.parsing, "num_epochs": args.num_epochs}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    parsing = train_settings(args.profile, **overrides).parsing
    # A dry run writes nothing, so it may look at a grid that is running.
    with contextlib.nullcontext() if args.dry_run else output_lock(args.out):
        data = load_data(args.data, parsing, args.profile, args.text_column, args.label_column)
        results = run_experiments(
            data, args.out, args.rows, args.seeds, args.profile, overrides,
            args.redo, _shows_progress(args), _log(args), args.dry_run,
        )  # fmt: skip
    if args.dry_run:
        print(format_plan(results), end="")
        return 0
    print((args.out / TABLE_FILE).read_text(encoding="utf-8"), end="")
    failed = int((results["status"] == "failed").sum())
    print(f"results in {args.out}: results.csv, {TABLE_FILE}, results.png and results.pdf")
    if failed:
        where = args.out / "results.csv"
        print(
            f"gptclassifier: {failed} of {len(results)} runs failed, see {where}", file=sys.stderr
        )
        return 1
    return 0


def run_evaluate(args: argparse.Namespace) -> None:
    """Print the metrics of a saved run on one of its splits, as text or as JSON."""
    metrics = evaluate_run(args.model, args.split, args.device, _shows_progress(args))
    if args.json:
        print(json.dumps(metrics, indent=2))
        return
    print(f"{args.split}: {metrics['num_examples']} messages")
    for name in ("accuracy", "precision", "recall", "f1"):
        print(f"{name:>9}: {metrics[name]:.2%}")
    print("confusion matrix (rows: true class, columns: predicted):")
    for row in metrics["confusion_matrix"]:
        print("  " + " ".join(f"{count:6d}" for count in row))


def run_classify(args: argparse.Namespace) -> None:
    """Print each message's label, every class's probability and the text, as TSV or JSON lines."""
    texts = args.texts
    if texts == ["-"]:
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if not texts:
            raise DataError("no messages on standard input")
    classes, probabilities = probabilities_with_run(args.model, texts, args.device)
    if args.threshold is None:
        labels = [classes[index] for index in probabilities.argmax(dim=-1).tolist()]
    elif len(classes) == 2:
        labels = [classes[int(p >= args.threshold)] for p in probabilities[:, 1].tolist()]
    else:
        raise ConfigError(f"--threshold needs two classes, and this run has {len(classes)}")
    if args.format == "jsonl":
        for text, label, row in zip(texts, labels, probabilities.tolist(), strict=True):
            chances = dict(zip(classes, row, strict=True))
            print(json.dumps({"label": label, "probabilities": chances, "text": text}))
        return
    table = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
    table.writerow(["label", *(f"P({name})" for name in classes), "text"])
    for text, label, row in zip(texts, labels, probabilities.tolist(), strict=True):
        table.writerow([label, *(f"{p:.6f}" for p in row), text])


def run_export(args: argparse.Namespace) -> None:
    """Write a standalone copy of a run, in the chosen format, and say how big its weights are."""
    ensure_run_dir_free(args.out, args.force)
    if args.format == "transformers":
        # The agreement is a caveat on the result, so it is shown even with -q.
        out = export_transformers(
            args.run, args.out, args.force, args.allow_pooling_change,
            progress=_shows_progress(args), log=tqdm.write,
        )  # fmt: skip
    else:
        out = export_run(args.run, args.out, args.force)
    size = (out / MODEL_FILE).stat().st_size / 1e6
    print(f"exported {args.run} to {out}: {MODEL_FILE} holds every parameter ({size:,.1f} MB)")


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Show a warning as plain text on standard error, without a source location."""
    print(f"warning: {message}", file=sys.stderr)


def _shows_progress(args: argparse.Namespace) -> bool:
    """Return whether a command draws progress bars: not with -q or --no-progress."""
    return not (args.quiet or getattr(args, "no_progress", False))


def _log(args: argparse.Namespace):
    """Return where a command's log lines go: beside the progress bars, or nowhere with -q."""
    return silent if args.quiet else tqdm.write


def _probability(text: str) -> float:
    """Parse a probability strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a probability between 0 and 1, not {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a user mistake prints one line and exits with status 2.

    A refusal of the system (status 1) and Ctrl-C (status 130) also end in one line.
    """
    args = build_parser(argv).parse_args(argv)
    skip_collection_at_exit()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", FallbackWarning)
            warnings.showwarning = _print_warning
            status = args.handler(args) or 0
    except GptClassifierError as exc:
        if args.debug:
            raise
        print(f"gptclassifier: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the system refused: a folder that cannot be written, a full disk
        if args.debug:
            raise
        # A full disk rarely names the file it was writing: then name the command's output.
        where = exc.filename or getattr(args, "out", None)
        where = f"{where}: " if where else ""
        print(f"gptclassifier: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"gptclassifier: interrupted; {_what_was_kept(args)}", file=sys.stderr)
        return 130
    return status


@functools.cache
def skip_collection_at_exit() -> None:
    """Freeze the objects Python tracks when it exits, so that its shutdown does not scan them.

    torch leaves about a million objects: scanning them takes most of a second, and the
    process ends anyway. Registered first, the freeze runs after every other exit handler.
    """
    atexit.register(gc.freeze)


def _what_was_kept(args: argparse.Namespace) -> str:
    """Say what an interrupted command left behind: outputs are written whole or not at all."""
    out = getattr(args, "out", None)
    if out is None:
        return "nothing was written"
    if args.command == "experiments":
        return f"the runs finished so far are kept in {out}; the same command goes on from there"
    if Path(out).exists():
        return f"nothing was written; {out} is kept as it was"
    return f"nothing was written; {out} was not created"
