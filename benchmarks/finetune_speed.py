"""Every way of fine-tuning on the same work, each a whole process: seconds, accuracy, speed-ups.

Each way runs in a fresh process, timed from its start to its end. The package's ways are a
whole `fine_tune`, what `gptclassifier train` runs (saving the run to a temporary folder), and
report their phases; transformers' Trainer runs benchmarks/trainer_way.py. The work is the
chapter's: GPT-2 small, 1,045 / 149 / 300 messages, 5 epochs, batch 8, AdamW (lr 5e-5, weight
decay 0.1), the last block and final norm trainable. Data: the SMS Spam Collection from --data or
$GPTCLASSIFIER_SMS_FILE (the book's parsing), else practice messages of the same number and
length. Weights: pretrained GPT-2 when cached, else the package's seeded random weights; the
same for every way.

    python benchmarks/finetune_speed.py [--quick] [--data FILE] [--no-scaling]

Ways: the chapter's loop (`train --chapter`, what the book's script does); the chapter's exact
results through the cache (`train`) in float32 and, where the hardware has it, bfloat16;
`train --fast`; transformers' Trainer in float32 and, where native, bfloat16. The package's ways
also evaluate every 50 steps on 5 batches, as the chapter does, score every message of the three
splits and save the run; the Trainer only trains, then predicts validation and test. Then a
scaling table: the fast way for one epoch on 1x, 4x and 16x the messages (practice messages, all
three splits scaled), and with gpt2-medium. The last lines compare like with like: the exact way
against the chapter's loop (the same results), `--fast` against the Trainer's faster setting (the
same pooling, at the last real token); and `speedup: N.Nx`, the chapter's loop over `--fast`.
"""

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import torch

from gptclassifier.cli import skip_collection_at_exit
from gptclassifier.data.loaders import create_datasets
from gptclassifier.data.practice_set import generate_practice_messages
from gptclassifier.data.sms import SMS_FILE_VARIABLE, LabeledData, Provenance, load_data
from gptclassifier.data.splits import prepare_splits
from gptclassifier.fine_tune import fine_tune
from gptclassifier.model.gpt import model_config
from gptclassifier.model.tokenizer import get_tokenizer
from gptclassifier.model.weights import cached_gpt2
from gptclassifier.progress import progress_bar
from gptclassifier.settings import FASTEST, TrainSettings
from gptclassifier.training.device import choose_device, choose_precision
from gptclassifier.training.estimate import matmul_gflops, peak_resident_bytes
from gptclassifier.training.flops import Workload, count_flops

LONGEST_MESSAGE = 120  # tokens: the real data's longest training message
REAL_SPAM = 747  # spam messages in the real data: balancing keeps as many ham
SCALES = (1, 4, 16)
PHASES = ("start-up", "tokenizing", "model", "cache pass", "training", "evaluation", "saving")
TRAINER_SCRIPT = Path(__file__).resolve().with_name("trainer_way.py")
CHAPTER = "the chapter's loop"
EXACT = {"float32": "exact, float32", "bfloat16": "exact, bfloat16"}
FAST = "fast (--fast)"
TRAINER = {"float32": "Trainer, float32", "bfloat16": "Trainer, bfloat16"}
PACKAGE_INCLUDES = "training and its evaluations, 3 splits scored, run saved"
TRAINER_INCLUDES = "training, validation and test predicted"


@dataclass(frozen=True)
class Way:
    """A way of fine-tuning: the command that runs it in a fresh process, and its settings."""

    command: tuple[str, ...]
    settings: TrainSettings | None = None  # None: transformers' Trainer


def practice_like_real(seed: int, scale: float = 1) -> LabeledData:
    """Return distinct practice messages of none over 120 tokens: `scale` times the real spam."""
    tokenizer = get_tokenizer()
    wanted = max(8, round(REAL_SPAM * scale))
    kept = {"spam": {}, "ham": {}}
    round_seed = seed
    while min(map(len, kept.values())) < wanted:
        for label, text in generate_practice_messages(round_seed, 8 * wanted):
            if len(kept[label]) < wanted and len(tokenizer.encode(text)) <= LONGEST_MESSAGE:
                kept[label][text] = None
        round_seed += 1
    pairs = [(label, text) for label in ("ham", "spam") for text in kept[label]]
    frame = pd.DataFrame(pairs, columns=["Label", "Text"])
    return LabeledData(frame, ("ham", "spam"), Provenance("practice", "(generated)", ""))


def cpu_name() -> str:
    """Return the CPU's model name as Linux reports it, else what Python knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cache_flops(splits: dict, settings: TrainSettings) -> float:
    """Return the FLOPs of the cache's one pass of the frozen blocks over every message."""
    cfg = model_config(settings.model)
    datasets = create_datasets(splits, get_tokenizer(), cfg["context_length"])
    workload = Workload.of(datasets, settings)
    flops = count_flops(
        workload, cfg, cfg["n_layers"] - 1, cache=True, one_position=True,
        trim=settings.trims_padding,
    )  # fmt: skip
    return flops["frozen blocks, once per message"]


def write_messages(labeled: LabeledData, path: Path) -> Path:
    """Write messages as a table with a header row, which every way reads with `--data`."""
    labeled.frame.to_csv(path, index=False)
    return path


def weights_of(model: str) -> str:
    """Return `pretrained` where a model's weights are cached, else `random`: never a download."""
    return "pretrained" if cached_gpt2(model) else "random"


def package_way(settings: TrainSettings, data_file: Path) -> Way:
    """Return one of the package's ways: this script fine-tunes once in a fresh process."""
    options = ("--one-way", json.dumps(asdict(settings)), "--data", str(data_file))
    return Way((sys.executable, str(Path(__file__).resolve()), *options), settings)


def trainer_way(precision: str, data_file: Path, num_epochs: int, start: Path) -> Way:
    """Return transformers' Trainer way in a precision: trainer_way.py in a fresh process."""
    options = ("--precision", precision, "--data", str(data_file), "--epochs", str(num_epochs))
    return Way((sys.executable, str(TRAINER_SCRIPT), *options, "--start", str(start)))


def trainer_start(data_file: Path, folder: Path) -> Path:
    """Return the folder of the Trainer's starting weights, written once, before any timing."""
    options = ("--data", str(data_file), "--write-start", str(folder))
    return Path(run_script((sys.executable, str(TRAINER_SCRIPT), *options)).splitlines()[-1])


def every_way(
    chapter: TrainSettings, data_file: Path, bfloat16: bool, start: Path
) -> dict[str, Way]:
    """Return every way to run on the chapter's work, bfloat16 ones where the hardware has it.

    The Trainer starts from the weights in `start` (trainer_start).
    """
    package = {CHAPTER: replace(chapter, loop="chapter"), EXACT["float32"]: chapter}
    if bfloat16:
        package[EXACT["bfloat16"]] = replace(chapter, precision="bfloat16")
    package[FAST] = replace(chapter, **FASTEST)
    ways = {name: package_way(settings, data_file) for name, settings in package.items()}
    for precision in TRAINER if bfloat16 else ("float32",):
        ways[TRAINER[precision]] = trainer_way(precision, data_file, chapter.num_epochs, start)
    return ways


def one_way(settings: TrainSettings, data_file: str) -> dict:
    """Fine-tune as `gptclassifier train` does, into a temporary folder; return measurements."""
    skip_collection_at_exit()  # as the command line does
    labeled = load_data(data_file, settings.parsing, "book")
    with tempfile.TemporaryDirectory() as folder:
        result = fine_tune(labeled, settings, Path(folder) / "run", "book", progress=False)
    return {
        "phases": result.phases.seconds,
        "validation": result.metrics["validation"]["accuracy"],
        "test": result.metrics["test"]["accuracy"],
        "precision": result.config["precision"],
        "peak MB": peak_resident_bytes() / 2**20,
    }


def run_script(command: tuple[str, ...]) -> str:
    """Run a command and return what it printed; stop with its error output if it fails."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{shlex.join(command)} failed:\n{done.stderr.strip()}")
    return done.stdout


def run_way(way: Way) -> dict:
    """Run a way as a fresh process and time it whole; return its seconds and measurements.

    Its start-up is the time it spent outside its phases: starting the interpreter, importing,
    reading and splitting the data, and exiting.
    """
    start = time.perf_counter()
    output = run_script(way.command)
    seconds = time.perf_counter() - start
    measured = json.loads(output.splitlines()[-1])
    phases = measured.pop("phases")
    return {"start-up": seconds - sum(phases.values()), **phases, "total": seconds, **measured}


def run_ways(ways: dict[str, Way], desc: str) -> dict[str, dict]:
    """Run every way, one after another, saying when each is done."""
    rows = {}
    with progress_bar(len(ways), desc, unit="way") as bar:
        for name, way in ways.items():
            rows[name] = run_way(way)
            bar.write(f"  done: {name} in {rows[name]['total']:.1f} s")
            bar.update()
    return rows


def run_scaling(fast: TrainSettings, scale: float, folder: Path) -> list[dict]:
    """Run the fast way on 1x, 4x and 16x the messages, and gpt2-medium on 1x; return each run."""
    data = {f"{factor}x": practice_like_real(fast.seed, factor * scale) for factor in SCALES}
    runs = {name: (fast, messages) for name, messages in data.items()}
    medium = replace(fast, model="gpt2-medium", weights=weights_of("gpt2-medium"))
    runs["gpt2-medium, 1x"] = (medium, data["1x"])
    ways = {
        name: package_way(settings, write_messages(messages, folder / f"scaled {name}.csv"))
        for name, (settings, messages) in runs.items()
    }
    rows = run_ways(ways, "scaling")
    return [
        {
            "run": name,
            "training messages": len(prepare_splits(messages, seed=settings.split_seed)["train"]),
            **rows[name],
        }
        for name, (settings, messages) in runs.items()
    ]


def formatted(table: pd.DataFrame, formats: dict[str, str]) -> pd.DataFrame:
    """Return a table's cells as text, each row in its format; missing cells blank."""
    return table.apply(
        lambda row: row.map(
            lambda value: "" if pd.isna(value) else formats[row.name].format(value)
        ),
        axis=1,
    )


def print_phases(rows: dict[str, dict]) -> None:
    """Print the seconds of every phase, way by way, each process's peak memory and cache speed."""
    formats = dict.fromkeys([*PHASES, "total"], "{:,.1f}")
    formats |= {"peak MB": "{:,.0f}", "cache GFLOP/s": "{:.0f}"}
    table = pd.DataFrame(rows).reindex(list(formats))
    print("seconds by phase, each way a whole process:")
    print(formatted(table, formats).to_string())


def faster_trainer(rows: dict[str, dict]) -> str:
    """Return the name of the Trainer's faster setting."""
    return min((name for name in TRAINER.values() if name in rows), key=lambda n: rows[n]["total"])


def print_ways(rows: dict[str, dict], ways: dict[str, Way]) -> None:
    """Print each way's whole seconds, accuracies, speed-ups and what its time includes."""
    against = dict.fromkeys([CHAPTER, faster_trainer(rows), TRAINER["float32"]])
    table = pd.DataFrame(
        {
            "seconds": f"{row['total']:,.1f}",
            **{f"vs {other}": f"{rows[other]['total'] / row['total']:.1f}x" for other in against},
            "validation": f"{row['validation']:.2%}",
            "test": f"{row['test']:.2%}",
            "time includes": TRAINER_INCLUDES if ways[name].settings is None else PACKAGE_INCLUDES,
        }
        for name, row in rows.items()
    ).set_axis(list(rows))
    print("every way on the same work, whole processes (vs X: X's seconds over this way's):")
    print(table.to_string())


def print_scaling(rows: list[dict]) -> None:
    """Print time and peak memory of each scaled run, and how each grows against the first."""
    base = rows[0]
    table = pd.DataFrame(
        {
            "run": row["run"],
            "training messages": f"{row['training messages']:,}",
            "cache pass s": f"{row['cache pass']:.1f}",
            "training s": f"{row['training']:.1f}",
            "total s": f"{row['total']:.1f}",
            "time vs 1x": f"{row['total'] / base['total']:.1f}x",
            "peak MB": f"{row['peak MB']:,.0f}",
            "memory vs 1x": f"{row['peak MB'] / base['peak MB']:.1f}x",
        }
        for row in rows
    )
    print(table.to_string(index=False))


def print_like_for_like(rows: dict[str, dict]) -> None:
    """Print the speed-ups that compare like with like, then the fast way's over the chapter's."""
    chapter, fast = rows[CHAPTER]["total"], rows[FAST]["total"]
    exact = {precision: rows[name]["total"] for precision, name in EXACT.items() if name in rows}
    print(
        f"same results: exact ({' / '.join(exact)}) vs the chapter's loop: "
        + " / ".join(f"{chapter / seconds:.1f}x" for seconds in exact.values())
    )
    trainer = rows[faster_trainer(rows)]["total"]
    pooling = "same pooling (last real token): --fast vs the Trainer's faster setting"
    print(f"{pooling}: {trainer / fast:.1f}x")
    print(f"speedup: {chapter / fast:.1f}x")


def main() -> None:
    """Run every way on the same work, then the scaling runs; print the tables and speed-ups."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a reduced run of every way, Trainer included: a few minutes",
    )
    parser.add_argument("--data", help="the SMS Spam Collection file or zip")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    parser.add_argument(
        "--one-way", metavar="SETTINGS",
        help="fine-tune once on --data with these TrainSettings (JSON) and print one JSON line: "
        "how the benchmark runs each of the package's ways",
    )  # fmt: skip
    args = parser.parse_args()
    if args.one_way:
        print(json.dumps(one_way(TrainSettings(**json.loads(args.one_way)), args.data)))
        return

    chapter = TrainSettings(weights=weights_of("gpt2-small"))  # the chapter's
    scale = 1.0
    if args.quick:
        chapter = replace(chapter, num_epochs=2, eval_freq=3, eval_iter=2)
        scale = 0.05
    device = choose_device()
    bfloat16 = choose_precision(device, "auto") == "bfloat16"
    data_file = args.data or os.environ.get(SMS_FILE_VARIABLE)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if data_file and not args.quick:
            labeled = load_data(data_file, parsing="book", profile="book")
        else:
            labeled = practice_like_real(chapter.seed, scale)
            data_file = write_messages(labeled, folder / "messages.csv")
        splits = prepare_splits(labeled, seed=chapter.split_seed)
        print(
            f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {device}; transformers {version('transformers')}"
        )
        print(
            f"data: {labeled.provenance.source}, {len(labeled.frame):,} messages; GPT-2 small "
            f"weights: {chapter.weights}, the same for every way; {chapter.num_epochs} epoch(s), "
            f"batch {chapter.batch_size}"
        )
        fp32, bf16 = (matmul_gflops(dtype, device) for dtype in (torch.float32, torch.bfloat16))
        print(
            f"plain matmul, (4096 x 768) by (768 x 3072): {fp32:.0f} GFLOP/s float32, "
            f"{bf16:.0f} GFLOP/s bfloat16"
        )
        start = trainer_start(data_file, folder / "start")
        ways = every_way(chapter, data_file, bfloat16, start)
        rows = run_ways(ways, "ways")
        for name, way in ways.items():
            if way.settings is not None and way.settings.loop == "fast":
                flops = cache_flops(splits, way.settings)
                rows[name]["cache GFLOP/s"] = flops / rows[name]["cache pass"] / 1e9
        print_phases(rows)
        print(
            "start-up: starting the interpreter, importing, reading and splitting the data, "
            "exiting; peak MB: the whole process's"
        )
        exact = rows[EXACT["float32"]]["cache GFLOP/s"]
        print(f"exact float32 cache pass: {exact / fp32:.0%} of the plain float32 matmul")
        print_ways(rows, ways)
        print(
            f"its evaluations: every {chapter.eval_freq} steps, {chapter.eval_iter} batches of "
            "training and of validation messages, as the chapter's; 3 splits: every message"
        )

        if not args.no_scaling:
            print("scaling: the fast way, 1 epoch, practice messages")
            print_scaling(run_scaling(replace(ways[FAST].settings, num_epochs=1), scale, folder))
    print_like_for_like(rows)


if __name__ == "__main__":
    main()
