"""The chapter's fine-tuning as practitioners run it today: transformers' Trainer, one process.

GPT2ForSequenceClassification on the chapter's split of the same messages (seed 123), GPT-2's
tokenizer, each batch padded to its longest message with <|endoftext|> (50256) and an attention
mask, the last transformer block, the final norm (ln_f) and the head (score) trainable, AdamW
(lr 5e-5, weight decay 0.1) at the chapter's constant rate without clipping, batch 8, 5 epochs,
seed 123; no evaluation, logging or saving while training; then the accuracy on validation and
test. The model classifies at each message's last real token, as `train --fast` does. It starts
from the package's weights: pretrained GPT-2 when cached (with transformers' own seeded head),
else the package's seeded random GPT-2 small and classification head.

    python benchmarks/trainer_way.py [--precision float32|bfloat16] [--data FILE] [--epochs N]
                                     [--quick] [--start FOLDER]

It prints one JSON line: the accuracies, the seconds of its phases and its peak memory. With
`--write-start FOLDER` it only writes the starting weights (finetune_speed.py does so once, so
that converting the package's weights is no part of the Trainer's time). It needs the `bench`
extra (transformers and accelerate).
"""

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.nn.utils.rnn import pad_sequence
from transformers import GPT2Config, GPT2ForSequenceClassification, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.utils import logging as transformers_logging

from gptclassifier.data.loaders import create_datasets
from gptclassifier.data.sms import LabeledData, load_data
from gptclassifier.data.splits import prepare_splits
from gptclassifier.errors import ConfigError, GptClassifierError
from gptclassifier.export import transformers_config, transformers_tensors
from gptclassifier.model.classifier import adapt_for_classification
from gptclassifier.model.gpt import LayerNorm, model_config
from gptclassifier.model.tokenizer import PAD_TOKEN_ID, get_tokenizer
from gptclassifier.model.weights import cached_gpt2, load_base_model
from gptclassifier.progress import Phases
from gptclassifier.settings import TrainSettings
from gptclassifier.training.device import bf16_is_fast, choose_device
from gptclassifier.training.estimate import peak_resident_bytes

PRECISIONS = ("float32", "bfloat16")
QUICK_EPOCHS = 2
QUICK_FRACTION = 0.05  # of the messages, sampled with the seed


def hf_config(cfg: dict, num_classes: int) -> GPT2Config:
    """Return transformers' configuration of a GPTModel configuration, for classification."""
    classes = [f"LABEL_{index}" for index in range(num_classes)]  # the Trainer needs no names
    return GPT2Config.from_dict(transformers_config(cfg, classes, LayerNorm(1).eps))


def starting_weights(settings: TrainSettings, num_classes: int, folder: Path) -> Path:
    """Return the folder of the weights every way starts from, for from_pretrained.

    Cached pretrained GPT-2's folder in the Hugging Face cache, else `folder`, where the
    package's seeded random model and classification head are written.
    """
    cached = cached_gpt2(settings.model)
    if cached:
        return cached.parent
    base = load_base_model(settings.model, settings.seed, "random")
    model = adapt_for_classification(base.model, settings, num_classes)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(transformers_tensors(model), folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def starting_model(
    folder: Path, settings: TrainSettings, num_classes: int
) -> GPT2ForSequenceClassification:
    """Load the starting weights in `folder`; a head they lack is drawn from the seed."""
    torch.manual_seed(settings.seed)
    config = hf_config(model_config(settings.model), num_classes)
    return GPT2ForSequenceClassification.from_pretrained(folder, config=config)


def freeze_all_but_last_block(model: GPT2ForSequenceClassification) -> None:
    """Train the last transformer block, the final norm and the head, as the chapter does."""
    model.requires_grad_(False)
    for part in (model.transformer.h[-1], model.transformer.ln_f, model.score):
        part.requires_grad_(True)


def tokenize(splits: dict, context_length: int) -> dict[str, list[dict]]:
    """Return each split's messages as unpadded token ids and labels, cut as the chapter cuts.

    The ids are the package's SpamDataset's, without their padding: the training messages
    within the context, the others cut to the longest training message.
    """
    datasets = create_datasets(splits, get_tokenizer(), context_length)
    return {
        name: [
            {
                "input_ids": ids[: max(1, sum(token != PAD_TOKEN_ID for token in ids))],
                "labels": label,
            }
            for ids, label in zip(dataset.encoded_texts, dataset.labels, strict=True)
        ]
        for name, dataset in datasets.items()
    }


def pad_batch(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest message with <|endoftext|>; mask the padding out."""
    ids = [torch.tensor(example["input_ids"]) for example in examples]
    return {
        "input_ids": pad_sequence(ids, batch_first=True, padding_value=PAD_TOKEN_ID),
        "attention_mask": pad_sequence([torch.ones_like(row) for row in ids], batch_first=True),
        "labels": torch.tensor([example["labels"] for example in examples]),
    }


def training_arguments(settings: TrainSettings, precision: str, folder: Path) -> TrainingArguments:
    """Return the chapter's hyperparameters as Trainer's arguments, with nothing logged or saved."""
    return TrainingArguments(
        output_dir=str(folder),
        num_train_epochs=settings.num_epochs,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        learning_rate=settings.lr,
        weight_decay=settings.weight_decay,
        lr_scheduler_type="constant",  # the chapter's; Trainer's default decays it linearly
        max_grad_norm=0.0,  # the chapter does not clip gradients
        seed=settings.seed,
        bf16=precision == "bfloat16",
        use_cpu=choose_device().type == "cpu",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def accuracy(trainer: Trainer, examples: list[dict]) -> float:
    """Return the share of messages whose predicted class is their label."""
    output = trainer.predict(examples)
    return float((output.predictions.argmax(-1) == output.label_ids).mean())


def fine_tune_with_trainer(
    labeled: LabeledData, settings: TrainSettings, precision: str, start: Path | None = None
) -> dict:
    """Fine-tune with transformers' Trainer; return the accuracies and the seconds of each phase.

    It starts from the weights in `start`, else from starting_weights, made here.
    """
    phases = Phases()
    splits = prepare_splits(labeled, seed=settings.split_seed)
    num_classes = len(labeled.classes)
    with tempfile.TemporaryDirectory() as folder:
        with phases.measure("model"):
            start = start or starting_weights(settings, num_classes, Path(folder) / "start")
            model = starting_model(start, settings, num_classes)
            freeze_all_but_last_block(model)
        with phases.measure("tokenizing"):
            examples = tokenize(splits, model.config.n_positions)
        with phases.measure("training"):
            trainer = Trainer(
                model=model,
                args=training_arguments(settings, precision, Path(folder)),
                train_dataset=examples["train"],
                data_collator=pad_batch,
            )
            trainer.remove_callback(PrinterCallback)  # it prints the training summary
            trainer.train()
        with phases.measure("evaluation"):
            accuracies = {
                name: accuracy(trainer, examples[name]) for name in ("validation", "test")
            }
    return {
        **accuracies,
        "phases": phases.seconds,
        "steps": trainer.state.global_step,
        "training messages": len(splits["train"]),
    }


def quick_sample(labeled: LabeledData, seed: int) -> LabeledData:
    """Return a seeded sample of QUICK_FRACTION of the messages."""
    frame = labeled.frame.sample(frac=QUICK_FRACTION, random_state=seed).sort_index()
    return replace(labeled, frame=frame)


def main() -> None:
    """Fine-tune the chapter's way with Trainer and print one JSON line of its measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="float32",
        help="bfloat16: Trainer's bf16 mixed precision, where native (default: float32)",
    )  # fmt: skip
    parser.add_argument("--data", help="the SMS Spam Collection file or zip, or a table")
    parser.add_argument("--epochs", type=int, help="passes over the data (default: 5)")
    parser.add_argument(
        "--quick", action="store_true",
        help=f"{QUICK_EPOCHS} epochs on a seeded {QUICK_FRACTION:.0%} of the messages",
    )  # fmt: skip
    parser.add_argument(
        "--start", type=Path, metavar="FOLDER",
        help="start from the model.safetensors in FOLDER (default: cached GPT-2, else the "
        "package's seeded random weights, converted first)",
    )  # fmt: skip
    parser.add_argument(
        "--write-start", type=Path, metavar="FOLDER",
        help="write the starting weights to FOLDER (unless cached GPT-2 is), print it and stop",
    )  # fmt: skip
    args = parser.parse_args()
    try:
        if args.precision == "bfloat16" and not bf16_is_fast(choose_device()):
            raise ConfigError(
                "this machine has no native bfloat16 (AMX or AVX-512 BF16 on a CPU): "
                "choose --precision float32"
            )
        settings = TrainSettings()
        if args.epochs is not None or args.quick:
            settings = replace(settings, num_epochs=args.epochs or QUICK_EPOCHS)
        labeled = load_data(args.data, settings.parsing, "book")
        if args.quick:
            labeled = quick_sample(labeled, settings.seed)
        if args.write_start:
            print(starting_weights(settings, len(labeled.classes), args.write_start))
            return
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        result = fine_tune_with_trainer(labeled, settings, args.precision, args.start)
    except GptClassifierError as exc:
        sys.exit(f"trainer_way.py: {exc}")
    peak = peak_resident_bytes() / 2**20
    line = {
        "precision": args.precision,
        "weights": "pretrained" if cached_gpt2(settings.model) else "random",
        "data": labeled.provenance.source,
        "epochs": settings.num_epochs,
        **result,
        "peak MB": peak,
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
