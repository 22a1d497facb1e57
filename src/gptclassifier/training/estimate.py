"""What a training run will need before it starts: its peak memory, part by part, and its minutes.

Memory is counted from the model's shapes (built on the meta device, so nothing is allocated);
time from the FLOPs that `training.flops` counts, at the speed of a plain matrix product
measured on this machine.
"""

import functools
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gptclassifier.model.classifier import adapt_for_classification, count_parameters
from gptclassifier.model.gpt import GPTModel, model_config
from gptclassifier.model.weights import HUB_CHECKPOINTS
from gptclassifier.settings import TrainSettings
from gptclassifier.training.device import choose_device, choose_precision, parameter_dtype
from gptclassifier.training.flops import Workload, count_flops
from gptclassifier.training.packed_blocks import can_pack
from gptclassifier.training.runners import cache_refusal, frozen_blocks

GB = 1e9
# Resident memory of a process that has imported torch, the package and matplotlib and read the
# data, with a tiny model's run on top: 470 MB measured (Linux, torch 2.13), rounded up.
INTERPRETER_BYTES = 500 * 2**20
# Of the memory available, the most a run may plan to take: the rest is for what is not counted.
HEADROOM = 0.9
# The calibration, on a 2-core AMD EPYC (docs/speed.md, the run of 2026-12-03): against a plain
# float32 product of 135 GFLOP/s, the chapter's loop ran at 1.0 of it (183 TFLOP, its last
# evaluation included, in 1,359 s) and the cache's pass at 1.3 (its batches are taller).
EFFICIENCY = 1.0
# A step of the cache's way spent 25 ms on the chapter's 7,090,946 trainable parameters,
# reading them and updating them: the cost of a step beyond its FLOPs, per trainable parameter.
SECONDS_PER_PARAMETER_STEP = 25e-3 / 7_090_946
SECONDS_PER_RUN = 5.0  # starting, building the model and saving the run (4.4 s measured)
# What a batch costs beyond its FLOPs where they are few: the cache's way evaluated the chapter's
# 1,494 messages, 187 batches, in 1.2 s.
SECONDS_PER_BATCH = 6e-3


@dataclass(frozen=True)
class Estimate:
    """What one run needs: memory by part in bytes, and minutes on this machine.

    `loading` is the memory that only loading the weights takes (a checkpoint's copy and the
    vocabulary-wide output layer the head replaces): it is freed before training starts.
    `packing`, the frozen blocks' bfloat16 copy (PackedBlocks), lives only while the cache fills.
    """

    memory: dict[str, int]  # interpreter, parameters, loading, gradients, optimizer, ...
    minutes: float

    @property
    def peak_bytes(self) -> int:
        """The most memory the run holds at once: loading, filling the cache, or training."""
        memory = self.memory
        held = memory["interpreter"] + memory["parameters"]
        packing, cache = memory.get("packing", 0), memory.get("cache", 0)
        training = sum(memory.values()) - held - memory["loading"] - packing
        return held + max(memory["loading"], packing + cache, training)

    def fits(self, available: int | None) -> bool:
        """Return whether the peak fits in `available` bytes, with headroom (unknown: it fits)."""
        return available is None or self.peak_bytes <= HEADROOM * available

    def needs(self, available: int) -> str:
        """Say the peak against the memory available: "needs about 25.3 GB ... 8.0 GB available"."""
        return (
            f"needs about {self.peak_bytes / GB:.1f} GB of memory at its peak and this machine "
            f"has {available / GB:.1f} GB available"
        )

    def remedy(self, settings: TrainSettings) -> str:
        """Say which change of `settings` shrinks the largest part of the memory."""
        memory = self.memory
        shrinks = {"a smaller --model": memory["parameters"] + memory["loading"]}
        if settings.trainable in ("all", "last_two_blocks"):
            fewer = "fewer trainable layers (--trainable last_block) or --trainable lora"
            shrinks[fewer] = memory["gradients"] + memory["optimizer"]
        if settings.batch_size > 1:
            shrinks["a smaller --batch-size"] = memory["activations"]
        if settings.pooling != "flexible":
            shrinks["--pooling flexible"] = memory["cache"]
        return max(shrinks, key=shrinks.get)


def estimate_run(
    settings: TrainSettings,
    workload: Workload,
    num_classes: int = 2,
    device: torch.device | None = None,
    timed: bool = True,
) -> Estimate:
    """Return the peak memory and minutes of fine-tuning `workload` with `settings` on `device`.

    `timed=False` leaves the minutes out (NaN), and with them the speed probe they need.
    """
    device = device or choose_device()
    precision = choose_precision(device, settings.precision)
    with torch.device("meta"):  # the real shapes, and what trains, with nothing allocated
        base = GPTModel(model_config(settings.model))
        vocabulary_head = base.out_head.weight.numel()
        model = adapt_for_classification(base, settings, num_classes)
    total, trainable = count_parameters(model)
    size = parameter_dtype(precision).itemsize
    cached = settings.loop == "fast" and cache_refusal(model) is None
    pretrained = settings.weights == "pretrained" and settings.model in HUB_CHECKPOINTS
    num_frozen = frozen_blocks(model)
    frozen = model.trf_blocks[:num_frozen]
    packed = cached and precision == "bfloat16" and can_pack(frozen, device)
    memory = {
        "interpreter": INTERPRETER_BYTES,
        "parameters": total * size,
        "loading": 4 * (vocabulary_head + (total if pretrained else 0)),
        "gradients": trainable * size,
        "optimizer": 2 * trainable * size,  # AdamW's two moments
        "activations": _activation_bytes(model, settings, workload, cached, size),
        "cache": _cache_bytes(model, settings, workload, size) if cached else 0,
        "packing": 2 * sum(p.numel() for p in frozen.parameters()) if packed else 0,
    }
    if precision == "bfloat16":  # autocast keeps a bfloat16 copy of each trained weight
        memory["activations"] += 2 * trainable
    if not timed:
        return Estimate(memory, math.nan)
    layers = len(model.trf_blocks)
    flops = count_flops(
        workload, model_config(settings.model),
        min(num_frozen, layers - 1),  # training the head alone is counted as the last block's
        num_classes, cache=cached, one_position=cached and settings.pooling != "mean",
        trim=settings.trims_padding,
    )  # fmt: skip
    # The last evaluation runs every message forward once, at the loop's forward cost a message.
    passes = sum(messages for messages, _, _ in workload.passes())
    forward = sum(flops.values()) - flops["backward"] - flops["frozen blocks, once per message"]
    last_evaluation = forward / max(passes, 1) * len(workload.distinct_lengths)
    dtype = torch.bfloat16 if precision == "bfloat16" else parameter_dtype(precision)
    speed = EFFICIENCY * matmul_gflops(dtype, device) * 1e9
    steps = workload.num_epochs * (len(workload.train_lengths) // workload.batch_size)
    batches = (passes + len(workload.distinct_lengths)) / workload.batch_size
    seconds = (
        SECONDS_PER_RUN
        + (sum(flops.values()) + last_evaluation) / speed
        + batches * SECONDS_PER_BATCH
        + steps * trainable * SECONDS_PER_PARAMETER_STEP
    )
    return Estimate(memory, seconds / 60)


def _activation_bytes(model: GPTModel, settings, workload: Workload, cached: bool, size) -> int:
    """Return what the forward pass of the widest training batch saves for the backward pass.

    Per token, a trained block saves 16 emb_dim values (its norms' and linear layers' inputs,
    the query, key, value and attention output, the feed-forward's two 4 x emb_dim tensors),
    each norm's mean and spread, and a log-sum-exp per head; LoRA adds the rank's values
    after each of the six A matrices. Blocks before the first trained parameter save nothing.
    """
    dim, heads = model.tok_emb.embedding_dim, model.trf_blocks[0].att.num_heads
    batch, tokens = workload.batch_size, workload.batch_size * workload.pad_to
    lora = 6 * settings.lora_rank if settings.trainable == "lora" else 0
    block = tokens * (16 * dim + 4 + heads + lora)
    trained = len(model.trf_blocks) - frozen_blocks(model)
    if cached and settings.pooling != "mean" and trained:
        # the last block at one position (block_at_positions): every position's normed input,
        # its norm's statistics and a score per head, then one position's states per message
        last = tokens * (2 * dim + 2 + heads) + batch * dim * (2 * heads + 14)
        values = (trained - 1) * block + last + batch * (2 * dim + 2)
    else:
        values = trained * block + tokens * (2 * dim + 2)  # the final norm and head everywhere
    return values * size


def _cache_bytes(model: GPTModel, settings: TrainSettings, workload: Workload, size) -> int:
    """Return what the frozen-prefix cache keeps: each distinct message's states."""
    if settings.pooling == "flexible":  # only the real tokens
        positions = sum(workload.distinct_lengths)
    else:
        positions = len(workload.distinct_lengths) * workload.pad_to
    return positions * model.tok_emb.embedding_dim * size


@functools.cache
def matmul_gflops(dtype: torch.dtype, device: torch.device, seconds: float = 0.5) -> float:
    """Return the GFLOP/s of a plain (4096 x 768) by (768 x 3072) product, as nn.Linear runs it.

    One product warms up, then products run for about `seconds`; measured once per process.
    """
    generator = torch.Generator(device).manual_seed(0)  # the global generator is left alone
    x = torch.randn(4096, 768, dtype=dtype, device=device, generator=generator)
    weight = torch.randn(3072, 768, dtype=dtype, device=device, generator=generator)
    with torch.inference_mode():
        F.linear(x, weight)
        repeats, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            F.linear(x, weight)
            if device.type == "cuda":
                torch.cuda.synchronize()
            repeats += 1
        elapsed = time.perf_counter() - start
    return repeats * 2 * 4096 * 768 * 3072 / elapsed / 1e9


def peak_resident_bytes() -> int:
    """Return this process's peak resident memory since its program started."""
    # Linux's VmHWM, not getrusage's ru_maxrss: across exec, ru_maxrss keeps the peak of the
    # parent a child process was forked from, so a child of a large process reports too much.
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # macOS counts bytes, the others kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
