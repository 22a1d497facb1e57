"""The `gptclassifier` command line: one subcommand per step of the chapter."""

import argparse
import sys
import warnings
from pathlib import Path

from gptclassifier import __version__
from gptclassifier.data import PARSINGS, load_data
from gptclassifier.errors import FallbackWarning, GptClassifierError
from gptclassifier.prepare import count_labels, prepare_splits, write_splits
from gptclassifier.profiles import PROFILES


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for all subcommands."""
    parser = argparse.ArgumentParser(
        prog="gptclassifier", description="Fine-tune GPT-2 into a text classifier."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = commands.add_parser(
        "prepare", help="balance and split the data into train/validation/test CSV files"
    )
    prepare.add_argument(
        "--data", type=Path, help="SMS data file, UCI zip, or CSV/TSV table with a header row"
    )
    prepare.add_argument(
        "--parsing",
        choices=PARSINGS,
        default="exact",
        help="exact: every line is a message; book: the chapter's pandas parse (default: exact)",
    )
    prepare.add_argument(
        "--profile", choices=list(PROFILES), help="default: $GPTCLASSIFIER_PROFILE or book"
    )
    prepare.add_argument("--text-column", default="Text", help="text column of a CSV/TSV table")
    prepare.add_argument("--label-column", default="Label", help="label column of a CSV/TSV table")
    prepare.add_argument("--seed", type=int, default=123, help="seed of balancing and shuffling")
    prepare.add_argument("--out", type=Path, default=Path("data/prepared"), help="output folder")
    prepare.set_defaults(handler=run_prepare)
    return parser


def run_prepare(args: argparse.Namespace) -> None:
    """Write the three splits and print their class counts."""
    data = load_data(args.data, args.parsing, args.profile, args.text_column, args.label_column)
    splits = prepare_splits(data, seed=args.seed)
    paths = write_splits(splits, data, args.out, parsing=args.parsing, seed=args.seed)
    origin = data.provenance
    print(f"data: {origin.source} {origin.path}")
    print(f"{len(data.frame):,} messages ({args.parsing} parsing), balanced and split:")
    print(count_labels(splits, data.classes).to_string())
    print(f"wrote {', '.join(str(path) for path in paths)}")


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Show a warning as plain text on standard error, without a source location."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a user mistake prints one line and exits with status 2."""
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", FallbackWarning)
            warnings.showwarning = _print_warning
            args.handler(args)
    except GptClassifierError as exc:
        if args.debug:
            raise
        print(f"gptclassifier: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptclassifier: interrupted", file=sys.stderr)
        return 130
    return 0
