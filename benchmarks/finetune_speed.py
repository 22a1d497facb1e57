"""Where fine-tuning's time goes, way by way, in one process; the speed-up of the fast way.

Each way is a whole `fine_tune`, what `gptclassifier train` runs, saving its run to a
temporary folder; start-up (a fresh interpreter importing the command line, and reading the
data) is measured once and counted in every way. The workload is the chapter's: GPT-2 small,
1,045 / 149 / 300 messages, 5 epochs, batch 8, AdamW (lr 5e-5, weight decay 0.1), the last
block and final norm trainable, evaluation every 50 steps on 5 batches. Data: the SMS Spam
Collection from --data or $GPTCLASSIFIER_SMS_FILE (the book's parsing), else practice messages
of the same number and length. Weights: pretrained GPT-2 when cached or downloadable, else the
same random weights for every way.

    python benchmarks/finetune_speed.py [--quick] [--data FILE] [--no-scaling]

Ways: the chapter's loop (`train --chapter`, what the book's script does); the chapter's exact
results through the cache (`train`) in float32 and, where the hardware has it, bfloat16; and
`train --fast`. Then a scaling table: the fast way for one epoch on 1x, 4x and 16x the
messages (practice messages, all three splits scaled), and with gpt2-medium. The last line is
`speedup: N.Nx`, the chapter's way over the fast way, whole processes.
"""

import argparse
import contextlib
import ctypes
import gc
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from gptclassifier.data.loaders import create_datasets
from gptclassifier.data.practice_set import generate_practice_messages
from gptclassifier.data.sms import LabeledData, Provenance, load_data
from gptclassifier.data.splits import prepare_splits
from gptclassifier.errors import FallbackWarning
from gptclassifier.fine_tune import fine_tune
from gptclassifier.model.gpt import model_config
from gptclassifier.model.tokenizer import get_tokenizer
from gptclassifier.model.weights import cached_gpt2
from gptclassifier.settings import FASTEST, TrainSettings
from gptclassifier.training.device import choose_device, choose_precision
from gptclassifier.training.flops import Workload, count_flops

LONGEST_MESSAGE = 120  # tokens: the real data's longest training message
REAL_SPAM = 747  # spam messages in the real data: balancing keeps as many ham
SCALES = (1, 4, 16)
PHASES = ("start-up", "model", "tokenizing", "cache pass", "training", "evaluation", "saving")


class PeakMemory:
    """Sample this process's resident memory in the background; keep the peak above the start.

    Memory that earlier ways freed is first handed back to the system (glibc's malloc_trim),
    so that the growth counts what this way allocates rather than what it reuses.
    """

    def __enter__(self):
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.start = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.02)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @property
    def megabytes(self) -> float:
        """Return the peak growth of resident memory in MB."""
        return (self.peak - self.start) / 2**20


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


def startup_seconds() -> float:
    """Return how long a fresh interpreter takes to import the command line."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import gptclassifier.cli"], check=True)
    return time.perf_counter() - start


def matmul_gflops(dtype: torch.dtype, device: torch.device) -> float:
    """Return the GFLOP/s of a plain (4096 x 768) by (768 x 3072) product, as nn.Linear runs it."""
    x = torch.randn(4096, 768, dtype=dtype, device=device)
    weight = torch.randn(3072, 768, dtype=dtype, device=device)
    with torch.inference_mode():
        for _ in range(3):
            F.linear(x, weight)
        repeats = 20
        start = time.perf_counter()
        for _ in range(repeats):
            F.linear(x, weight)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / repeats
    return 2 * 4096 * 768 * 3072 / seconds / 1e9


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


def run(labeled: LabeledData, settings: TrainSettings, startup: float, folder: Path) -> dict:
    """Fine-tune one way, as `gptclassifier train` does; return its phases and measurements."""
    with PeakMemory() as memory, tempfile.TemporaryDirectory(dir=folder) as out:
        result = fine_tune(labeled, settings, Path(out) / "run", "book", progress=False)
    seconds = {"start-up": startup, **result.phases.seconds}
    cached = settings.loop == "fast"
    splits = prepare_splits(labeled, seed=settings.seed)  # the split fine_tune made
    return {
        **seconds,
        "total": sum(seconds.values()),
        "peak MB": memory.megabytes,
        "cache GFLOP/s": (
            cache_flops(splits, settings) / seconds["cache pass"] / 1e9 if cached else None
        ),
        "validation": result.metrics["validation"]["accuracy"],
        "test": result.metrics["test"]["accuracy"],
        "precision": result.config["precision"],
        "training messages": len(splits["train"]),
    }


def print_ways(rows: dict[str, dict]) -> None:
    """Print the seconds of every phase, way by way, and each way's other measurements."""
    table = pd.DataFrame(rows)
    chapter = table.loc["total", "the chapter's loop"]
    seconds = table.loc[[*PHASES, "total"]].map(lambda value: f"{value:,.1f}")
    speedup = table.loc["total"].map(lambda value: f"{chapter / value:.1f}x")
    other = pd.DataFrame(
        {
            "speed-up": speedup,
            "peak MB": table.loc["peak MB"].map(lambda value: f"{value:,.0f}"),
            "cache GFLOP/s": table.loc["cache GFLOP/s"].map(
                lambda value: "" if value is None else f"{value:.0f}"
            ),
            "validation": table.loc["validation"].map(lambda value: f"{value:.2%}"),
            "test": table.loc["test"].map(lambda value: f"{value:.2%}"),
        }
    ).T
    print("seconds by phase:")
    print(pd.concat([seconds, other]).to_string())


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


def main() -> None:
    """Run every way on the same work, then the scaling runs; print the tables and the speed-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run, about two minutes")
    parser.add_argument("--data", help="the SMS Spam Collection file or zip")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    args = parser.parse_args()

    chapter = TrainSettings()  # the chapter's
    scale = 1.0
    if args.quick:
        chapter = TrainSettings(num_epochs=2, eval_freq=3, eval_iter=2)
        scale = 0.05
    device = choose_device()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)  # reported in the header instead
        startup = startup_seconds()
        start = time.perf_counter()
        data_file = args.data or os.environ.get("GPTCLASSIFIER_SMS_FILE")
        if data_file and not args.quick:
            labeled = load_data(data_file, parsing="book", profile="book")
        else:
            labeled = practice_like_real(chapter.seed, scale)
        startup += time.perf_counter() - start

        ways = {
            "the chapter's loop": replace(chapter, loop="chapter"),
            "exact, float32": chapter,
        }
        if choose_precision(device, "auto") == "bfloat16":
            ways["exact, bfloat16"] = replace(chapter, precision="bfloat16")
        ways["fast (--fast)"] = replace(chapter, **FASTEST)

        weights = "pretrained" if cached_gpt2("gpt2-small") else "random (offline)"
        print(
            f"machine: {cpu_name()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}"
        )
        print(
            f"data: {labeled.provenance.source}, {len(labeled.frame):,} messages; GPT-2 small "
            f"weights: {weights}; {chapter.num_epochs} epoch(s), batch {chapter.batch_size}"
        )
        fp32, bf16 = (matmul_gflops(dtype, device) for dtype in (torch.float32, torch.bfloat16))
        print(
            f"plain matmul, (4096 x 768) by (768 x 3072): {fp32:.0f} GFLOP/s float32, "
            f"{bf16:.0f} GFLOP/s bfloat16"
        )
        rows = {}
        with tempfile.TemporaryDirectory() as folder:
            for name, settings in ways.items():
                rows[name] = run(labeled, settings, startup, Path(folder))
                print(f"  done: {name} in {rows[name]['total']:.1f} s", flush=True)
            print_ways(rows)
            exact = rows["exact, float32"]["cache GFLOP/s"]
            print(f"exact float32 cache pass: {exact / fp32:.0%} of the plain float32 matmul")

            if not args.no_scaling:
                fast = replace(ways["fast (--fast)"], num_epochs=1)
                scaled = [
                    (f"{factor}x", fast, practice_like_real(chapter.seed, factor * scale))
                    for factor in SCALES
                ]
                scaled.append(("gpt2-medium, 1x", replace(fast, model="gpt2-medium"), scaled[0][2]))
                print("scaling: the fast way, 1 epoch, practice messages")
                results = []
                for name, settings, data in scaled:
                    results.append({"run": name, **run(data, settings, startup, Path(folder))})
                    print(f"  done: {name} in {results[-1]['total']:.1f} s", flush=True)
                print_scaling(results)

    total = rows["the chapter's loop"]["total"]
    for name, row in rows.items():
        if name != "the chapter's loop":
            print(f"{name}: {total / row['total']:.1f}x the chapter's way")
    print(f"speedup: {total / rows['fast (--fast)']['total']:.1f}x")


if __name__ == "__main__":
    main()
