"""Fine-tune the chapter's way and the fast way on the same work, in one process; print the ratio.

The workload is the chapter's: GPT-2 small, 1,045 / 149 / 300 messages, 5 epochs, batch 8,
AdamW (lr 5e-5, weight decay 0.1), the last block and final norm trainable, evaluation every
50 steps on 5 batches. Data: the SMS Spam Collection from --data or $GPTCLASSIFIER_SMS_FILE
(the book's parsing, hence the book's split); otherwise practice messages of the same number
and length. Weights: pretrained GPT-2 when cached or downloadable, else the same random
weights for every way.

    python benchmarks/finetune_speed.py [--quick] [--data FILE] [--precision auto|bfloat16]

Ways: the chapter's loop; the fast loop with the chapter's last-token pooling (the same
results, and the default of `gptclassifier train`); the fast loop with flexible pooling and
trimmed padding (`gptclassifier train --fast`), in float32 and, where the hardware has it,
bfloat16. The last line is
`speedup: N.Nx`, the float32 fast way against the chapter's way.
"""

import argparse
import contextlib
import copy
import ctypes
import gc
import os
import platform
import threading
import time
import warnings
from dataclasses import dataclass

import pandas as pd
import torch

from gptclassifier.data import LabeledData, Provenance, load_data
from gptclassifier.dataset import create_data_loaders, create_datasets
from gptclassifier.errors import FallbackWarning
from gptclassifier.evaluate import classify_texts
from gptclassifier.fast import Autocast, choose_precision, speed_up
from gptclassifier.finetune import add_classification_head, set_trainable
from gptclassifier.practice import generate_practice_messages
from gptclassifier.prepare import prepare_splits
from gptclassifier.profiles import TrainSettings
from gptclassifier.tokenizer import get_tokenizer
from gptclassifier.train import calc_accuracy_loader, choose_device, train_classifier
from gptclassifier.weights import load_base_model

LONGEST_MESSAGE = 120  # tokens: the real data's longest training message
PRACTICE_MESSAGES = 5800  # about 747 spam once messages over 120 tokens are dropped


@dataclass
class Way:
    """One way to fine-tune: its loop, pooling and precision."""

    name: str
    loop: str
    pooling: str
    precision: str


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


def practice_like_real(seed: int) -> LabeledData:
    """Return practice messages of the real data's size, none longer than 120 tokens."""
    tokenizer = get_tokenizer()
    pairs = [
        (label, text)
        for label, text in generate_practice_messages(seed, PRACTICE_MESSAGES)
        if len(tokenizer.encode(text)) <= LONGEST_MESSAGE
    ]
    frame = pd.DataFrame(pairs, columns=["Label", "Text"])
    return LabeledData(frame, ("ham", "spam"), Provenance("practice", "(generated)", ""))


def shrink(splits: dict, train: int, other: int) -> dict:
    """Keep the first messages of each split, for the quick run."""
    return {
        name: frame.iloc[: train if name == "train" else other] for name, frame in splits.items()
    }


def run(way: Way, base, splits, settings: TrainSettings, device) -> dict:
    """Fine-tune a fresh copy of the base model one way; return its measurements."""
    fast = way.loop == "fast"
    datasets = create_datasets(splits, get_tokenizer(), base.config["context_length"])
    trim = fast and way.pooling == "flexible"
    loaders = create_data_loaders(datasets, settings.batch_size, trim=trim, bucket=trim)
    model = set_trainable(
        add_classification_head(copy.deepcopy(base.model), 2, settings.seed), settings.trainable
    ).to(device)
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    with PeakMemory() as memory:
        start = time.perf_counter()
        runner = (
            speed_up(model, way.pooling, way.precision, datasets=datasets.values())
            if fast
            else model
        )
        history = train_classifier(
            runner, loaders["train"], loaders["validation"], optimizer, device,
            settings.num_epochs, settings.eval_freq, settings.eval_iter, way.pooling,
            progress=False,
        )  # fmt: skip
        train_seconds = time.perf_counter() - start  # the cache's one pass included
        accuracy = {
            name: calc_accuracy_loader(loaders[name], runner, device, pooling=way.pooling)
            for name in ("validation", "test")
        }
        seconds = time.perf_counter() - start
    texts = splits["test"]["Text"].tolist()  # new to the classifier: no cache
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # messages cut to the padding length
        classify_texts(
            texts, Autocast(model) if way.precision == "bfloat16" else model, get_tokenizer(),
            device,
            max_length=datasets["train"].max_length, pooling=way.pooling,
        )  # fmt: skip
    classify_seconds = time.perf_counter() - start
    return {
        "way": way.name,
        "precision": way.precision,
        "wall s": seconds,
        "train msg/s": history.examples_seen / train_seconds,
        "peak MB": memory.megabytes,
        "val acc": accuracy["validation"],
        "test acc": accuracy["test"],
        "classify msg/s": len(texts) / classify_seconds,
    }


def main() -> None:
    """Run every way on the same work and print the table and the speed-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run, under a minute")
    parser.add_argument("--data", help="the SMS Spam Collection file or zip")
    parser.add_argument("--precision", default="auto", help="of the mixed-precision fast run")
    args = parser.parse_args()

    settings = TrainSettings()  # the chapter's
    if args.quick:
        settings = TrainSettings(num_epochs=2, eval_freq=3, eval_iter=2)
    device = choose_device()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)  # reported in the header instead
        data_file = args.data or os.environ.get("GPTCLASSIFIER_SMS_FILE")
        labeled = (
            load_data(data_file, parsing="book", profile="book")
            if data_file
            else practice_like_real(settings.seed)
        )
        base = load_base_model("gpt2-small", settings.seed)
    splits = prepare_splits(labeled, seed=settings.seed)
    if args.quick:
        splits = shrink(splits, train=40, other=16)

    ways = [
        Way("chapter", "chapter", "last", "float32"),
        Way("fast, last token", "fast", "last", "float32"),
        Way("fast", "fast", "flexible", "float32"),
    ]
    mixed = choose_precision(device, args.precision)
    if mixed != "float32":
        ways.append(Way("fast", "fast", "flexible", mixed))

    sizes = " / ".join(f"{len(frame):,}" for frame in splits.values())
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}"
    )
    print(
        f"data: {labeled.provenance.source}, {sizes} messages; weights: "
        f"{base.provenance['source']}; {settings.num_epochs} epoch(s), batch {settings.batch_size}"
    )
    rows = []
    for way in ways:
        rows.append(run(way, base, splits, settings, device))
        print(f"  done: {way.name} {way.precision} in {rows[-1]['wall s']:.1f} s", flush=True)
    formats = {
        "wall s": "{:.1f}",
        "train msg/s": "{:.1f}",
        "peak MB": "{:.0f}",
        "val acc": "{:.2%}",
        "test acc": "{:.2%}",
        "classify msg/s": "{:.1f}",
    }
    formatters = {column: template.format for column, template in formats.items()}
    print(pd.DataFrame(rows).to_string(index=False, formatters=formatters))
    chapter = rows[0]["wall s"]
    print(f"speedup with the chapter's last token: {chapter / rows[1]['wall s']:.1f}x")
    if len(rows) > 3:
        print(f"speedup with {rows[3]['precision']}: {chapter / rows[3]['wall s']:.1f}x")
    print(f"speedup: {chapter / rows[2]['wall s']:.1f}x")


if __name__ == "__main__":
    main()
