"""The device and the precision a run computes in: CUDA, MPS from torch 2.9, native bfloat16."""

import platform
import subprocess
import sys

import pytest
import torch

from gptclassifier.errors import ConfigError
from gptclassifier.training.device import (
    bf16_is_fast,
    choose_device,
    choose_precision,
    keep_freed_memory,
)
from gptclassifier.training.runners import FrozenPrefixCache, speed_up


@pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(),
    reason="this machine has an accelerator",
)
def test_choose_device_returns_cpu_on_a_machine_without_accelerator():
    assert choose_device() == torch.device("cpu")


def test_choose_device_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device() == torch.device("cuda")


@pytest.mark.parametrize(
    ("version", "expected"),
    [("2.8.0", "cpu"), ("2.9.0", "mps"), ("2.10.1+cpu", "mps"), ("3.0.0", "mps")],
)
def test_choose_device_uses_mps_only_from_torch_2_9(monkeypatch, version, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch, "__version__", version)
    assert choose_device() == torch.device(expected)


def test_a_requested_device_is_used_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("cuda") == torch.device("cuda")


def test_a_requested_device_that_is_missing_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"--device cuda: this machine has no cuda \(cpu only\)"):
        choose_device("cuda")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        choose_device("tpu")


def test_choose_precision(nano_classifier):
    cpu = torch.device("cpu")
    assert choose_precision(cpu, "float32") == "float32"
    assert choose_precision(cpu, "bfloat16") == "bfloat16"
    assert choose_precision(cpu, "float64") == "float64"
    assert choose_precision(cpu, "auto") in ("float32", "bfloat16")
    with pytest.raises(ConfigError, match="unknown precision"):
        choose_precision(cpu, "float16x")
    exact = nano_classifier("last_block", seed=0).double()
    assert isinstance(speed_up(exact, "last", "float64"), FrozenPrefixCache)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_cuda_only_where_native(monkeypatch, native):
    def is_bf16_supported(including_emulation=True):
        return including_emulation or native  # every GPU emulates bfloat16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    cuda = torch.device("cuda")
    assert bf16_is_fast(cuda) is native
    assert choose_precision(cuda, "auto") == ("bfloat16" if native else "float32")


# Training steps of a feed-forward layer under bfloat16 autocast, as the fast loop's last block
# takes them; then the page faults of the last eight steps, the first four warming up.
FAULTS_SCRIPT = """
import resource, sys
import torch
from gptclassifier.training.device import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(768, 3072), torch.nn.GELU(), torch.nn.Linear(3072, 768))
optimizer = torch.optim.AdamW(model.parameters())
for step in range(12):
    if step == 4:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    optimizer.zero_grad()
    with torch.autocast("cpu", torch.bfloat16):
        loss = model(torch.ones(8, 768)).float().square().mean()
    loss.backward()
    optimizer.step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 8)
"""


def page_faults_a_step(mode: str) -> int:
    """Return the page faults of a step of FAULTS_SCRIPT, in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_freed_memory_is_kept_for_the_next_step():
    # a step frees and takes again about 24 MB: 5,700 pages of 4 kB by default, none kept (a
    # few hundred where the kernel reclaims idle pages meanwhile)
    default, kept = page_faults_a_step("default"), page_faults_a_step("keep")
    assert default > 1000
    assert kept < default / 5


def test_elsewhere_the_allocator_is_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert keep_freed_memory() is False
