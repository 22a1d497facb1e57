"""The `gptclassifier` command line: one subcommand per step of the chapter."""

import argparse
import sys
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from gptclassifier import __version__
from gptclassifier.data.sms import load_data
from gptclassifier.data.splits import SPLIT_NAMES, count_labels, prepare_splits, write_splits
from gptclassifier.errors import DataError, FallbackWarning, GptClassifierError
from gptclassifier.evaluation.inference import classify_with_run, evaluate_run
from gptclassifier.experiments.book_table import EXPERIMENTS, choose_experiments
from gptclassifier.export import FORMATS, export_run, export_transformers
from gptclassifier.runs import MODEL_FILE, ensure_run_dir_free
from gptclassifier.settings import CHOICES, FASTEST, PROFILES, SETTING_NAMES, train_settings


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for all subcommands, one function each."""
    parser = argparse.ArgumentParser(
        prog="gptclassifier", description="Fine-tune GPT-2 into a text classifier."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sources = _source_options()
    _add_prepare(commands, sources)
    _add_train(commands, sources)
    _add_experiments(commands, sources)
    _add_evaluate(commands)
    _add_classify(commands)
    _add_export(commands)
    return parser


def _default(name: str) -> str:
    """Say a setting's default in each profile where they differ: `default: 5e-05; smoke: 0.001`."""
    book, *others = PROFILES.values()
    value = getattr(book.training, name)
    differ = [
        f"{profile.name}: {getattr(profile.training, name)}"
        for profile in others
        if getattr(profile.training, name) != value
    ]
    return "; ".join([f"default: {value}", *differ])


def _setting(parser: argparse.ArgumentParser, name: str, help: str, flag=None, **options) -> None:
    """Add the option of a TrainSettings field; its choices and default come from settings."""
    flag = flag or "--" + name.replace("_", "-")
    if name in CHOICES:
        options["choices"] = CHOICES[name]
    parser.add_argument(flag, dest=name, help=f"{help} ({_default(name)})", **options)


def _source_options() -> argparse.ArgumentParser:
    """Return the options that say which messages to read."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--profile", choices=list(PROFILES), help="default: $GPTCLASSIFIER_PROFILE or book"
    )
    options.add_argument(
        "--data", type=Path, help="SMS Spam Collection file or zip, or a table with a header row"
    )
    _setting(options, "parsing", "book: the chapter's pandas read; exact: every line a message")
    options.add_argument("--text-column", default="Text", help="text column of a table")
    options.add_argument("--label-column", default="Label", help="label column of a table")
    return options


def _add_prepare(commands, sources: argparse.ArgumentParser) -> None:
    """Add `prepare`: balance and split the data into CSV files."""
    prepare = commands.add_parser(
        "prepare", parents=[sources], help="balance and split the data into CSV files"
    )
    _setting(prepare, "seed", "seed of sampling and splitting", type=int)
    prepare.add_argument("--out", type=Path, default=Path("data/prepared"), help="output folder")
    prepare.set_defaults(handler=run_prepare)


def _add_train(commands, sources: argparse.ArgumentParser) -> None:
    """Add `train`: every setting of TrainSettings, with the choices and defaults it declares."""
    train = commands.add_parser("train", parents=[sources], help="fine-tune GPT-2 and save the run")
    _setting(train, "model", "model size")
    _setting(train, "weights", "pretrained or seeded random weights")
    _setting(train, "trainable", "what to fine-tune")
    _setting(train, "lora_rank", "with --trainable lora: the rank", type=int)
    _setting(train, "lora_alpha", "with --trainable lora: the scale", type=float)
    _setting(train, "pooling", "which token's logits classify, or mean: the average of all")
    _setting(train, "padding", "to the longest training message or to the model's whole context")
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
    _setting(train, "precision", "auto: bfloat16 where the hardware has it, else float32")
    train.add_argument(
        "--bucket", action=argparse.BooleanOptionalAction, default=None,
        help="with flexible pooling: batch messages of similar length (default: with --fast)",
    )  # fmt: skip
    train.add_argument("--compile", action="store_true", help="torch.compile the trained part")
    _setting(train, "num_epochs", "passes over the data", "--epochs", type=int)
    _setting(train, "batch_size", "messages per step", type=int)
    _setting(train, "lr", "AdamW learning rate", type=float)
    _setting(train, "seed", "seed of sampling, shuffling and training", type=int)
    train.add_argument("--out", type=Path, required=True, help="run directory to create")
    train.add_argument("--force", action="store_true", help="replace an existing run directory")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    train.set_defaults(handler=run_train)


def _add_experiments(commands, sources: argparse.ArgumentParser) -> None:
    """Add `experiments`: the book's table over several seeds."""
    experiments = commands.add_parser(
        "experiments", parents=[sources],
        help="the book's table of design experiments, over several seeds, with baselines",
    )  # fmt: skip
    experiments.add_argument(
        "--rows", type=_names, metavar="NAME,...",
        help=f"experiments to run (default: all): {', '.join(EXPERIMENTS)}",
    )  # fmt: skip
    experiments.add_argument(
        "--seeds", type=_seeds, default=(123,), metavar="SEED,...",
        help="training seeds, one run of every row each (default: 123); one split: the chapter's",
    )  # fmt: skip
    _setting(experiments, "num_epochs", "passes over the data", "--epochs", type=int)
    experiments.add_argument("--out", type=Path, required=True, help="folder for runs and tables")
    experiments.add_argument("--redo", action="store_true", help="run again rows already run")
    experiments.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    experiments.set_defaults(handler=run_experiments_command)


def _add_evaluate(commands) -> None:
    """Add `evaluate`: a saved run's metrics on one of its splits."""
    evaluate = commands.add_parser("evaluate", help="metrics of a saved run on one of its splits")
    evaluate.add_argument("--model", type=Path, required=True, help="run directory")
    evaluate.add_argument("--split", choices=SPLIT_NAMES, default="test", help="default: test")
    evaluate.set_defaults(handler=run_evaluate)


def _add_classify(commands) -> None:
    """Add `classify`: new messages through a saved run."""
    classify = commands.add_parser("classify", help="classify new messages with a saved run")
    classify.add_argument("--model", type=Path, required=True, help="run directory")
    classify.add_argument("texts", nargs="+", metavar="TEXT", help="messages; - reads stdin")
    classify.set_defaults(handler=run_classify)


def _add_export(commands) -> None:
    """Add `export`: a run with every parameter, as a run folder or for transformers."""
    export = commands.add_parser(
        "export", help="write a run with every parameter, as a run folder or for transformers"
    )
    export.add_argument("run", type=Path, metavar="RUN", help="run directory")
    export.add_argument("--to", dest="out", type=Path, required=True, help="folder to create")
    export.add_argument(
        "--format", choices=FORMATS, default="run",
        help="run: a run folder that needs no base model (default); transformers: a folder "
        "that GPT2ForSequenceClassification.from_pretrained and pipeline() load",
    )  # fmt: skip
    export.add_argument("--force", action="store_true", help="replace an existing folder")
    export.set_defaults(handler=run_export)


def run_prepare(args: argparse.Namespace) -> None:
    """Write the three splits and print their class counts."""
    settings = train_settings(args.profile, parsing=args.parsing, seed=args.seed)
    data = load_data(args.data, settings.parsing, args.profile, args.text_column, args.label_column)
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
        data, settings, args.out, args.profile, args.force, not args.no_progress, log=tqdm.write
    )
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
    from gptclassifier.experiments.grid import TABLE_FILE, run_experiments

    overrides = {"parsing": args.parsing, "num_epochs": args.num_epochs}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    parsing = train_settings(args.profile, **overrides).parsing
    data = load_data(args.data, parsing, args.profile, args.text_column, args.label_column)
    results = run_experiments(
        data, args.out, args.rows, args.seeds, args.profile, overrides,
        args.redo, not args.no_progress, log=tqdm.write,
    )  # fmt: skip
    print((args.out / TABLE_FILE).read_text(encoding="utf-8"), end="")
    failed = int((results["status"] != "ok").sum())
    print(f"results in {args.out}: results.csv, {TABLE_FILE}, results.png and results.pdf")
    if failed:
        where = args.out / "results.csv"
        print(
            f"gptclassifier: {failed} of {len(results)} runs failed, see {where}", file=sys.stderr
        )
        return 1
    return 0


def run_evaluate(args: argparse.Namespace) -> None:
    """Print the metrics of a saved run on one of its splits."""
    metrics = evaluate_run(args.model, args.split)
    print(f"{args.split}: {metrics['num_examples']} messages")
    for name in ("accuracy", "precision", "recall", "f1"):
        print(f"{name:>9}: {metrics[name]:.2%}")
    print("confusion matrix (rows: true class, columns: predicted):")
    for row in metrics["confusion_matrix"]:
        print("  " + " ".join(f"{count:6d}" for count in row))


def run_classify(args: argparse.Namespace) -> None:
    """Print label, probability and text for each message."""
    texts = args.texts
    if texts == ["-"]:
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if not texts:
            raise DataError("no messages on standard input")
    for text, prediction in zip(texts, classify_with_run(args.model, texts), strict=True):
        print(f"{prediction.label}\t{prediction.probability:.4f}\t{text}")


def run_export(args: argparse.Namespace) -> None:
    """Write a standalone copy of a run, in the chosen format, and say how big its weights are."""
    ensure_run_dir_free(args.out, args.force)
    export = export_transformers if args.format == "transformers" else export_run
    out = export(args.run, args.out, args.force)
    size = (out / MODEL_FILE).stat().st_size / 1e6
    print(f"exported {args.run} to {out}: {MODEL_FILE} holds every parameter ({size:,.1f} MB)")


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Show a warning as plain text on standard error, without a source location."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a user mistake prints one line and exits with status 2.

    A refusal of the system (status 1) and Ctrl-C (status 130) also end in one line.
    """
    args = build_parser().parse_args(argv)
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
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"gptclassifier: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"gptclassifier: interrupted; {_what_was_kept(args)}", file=sys.stderr)
        return 130
    return status


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
