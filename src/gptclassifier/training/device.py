"""Where and in what precision a run computes: the device, bfloat16, the fused optimizer, and
the host's allocator."""

import ctypes
import platform
from pathlib import Path

import torch
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from gptclassifier.errors import ConfigError, check_choice
from gptclassifier.settings import PRECISIONS

DEVICES = ("auto", "cpu", "cuda", "mps")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest on 64-bit: smaller blocks come from the heap
TRIM_THRESHOLD = 2**30  # free memory the heap keeps before it hands any back


def choose_device(requested: str = "auto") -> torch.device:
    """Return the requested device; `auto`: CUDA if present, else MPS (torch 2.9+), else the CPU.

    A requested device that this machine lacks is refused, never silently replaced.
    """
    check_choice("device", requested, DEVICES)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _has_mps()}
    if requested == "auto":
        return torch.device(next(name for name in ("cuda", "mps", "cpu") if available[name]))
    if not available[requested]:
        found = ", ".join(name for name, present in available.items() if present)
        raise ConfigError(f"--device {requested}: this machine has no {requested} ({found} only)")
    return torch.device(requested)


def _has_mps() -> bool:
    """Return whether Apple's MPS can train here: torch 2.9 or newer, on a Mac that has it."""
    major, minor = (int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return (major, minor) >= (2, 9) and torch.backends.mps.is_available()


def bf16_is_fast(device: torch.device) -> bool:
    """Return whether this device multiplies bfloat16 matrices in hardware, not by emulation."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu" and platform.system() == "Linux":
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
        return "amx_bf16" in flags or "avx512_bf16" in flags
    return False


def choose_precision(device: torch.device, precision: str = "auto") -> str:
    """Resolve `auto` to bfloat16 where the hardware has it, else float32.

    float64 is for exact comparisons: the model's parameters are then float64 (parameter_dtype).
    """
    check_choice("precision", precision, PRECISIONS)
    if precision == "auto":
        return "bfloat16" if bf16_is_fast(device) else "float32"
    return precision


def has_fused_adamw(device: torch.device) -> bool:
    """Return whether AdamW can update every parameter in one fused kernel on this device.

    The fused kernel takes the same steps as the default one, up to rounding in the last bit,
    and spends a few milliseconds less on each step of the chapter's 7 million parameters.
    """
    return device.type in _get_fused_kernels_supported_devices()


def parameter_dtype(precision: str) -> torch.dtype:
    """Return the dtype a model's parameters have for a resolved precision (bfloat16: autocast)."""
    return torch.float64 if precision == "float64" else torch.float32


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory a training step frees, for the next step to reuse.

    By default glibc hands large freed blocks back to the system, and every step's tensors of a
    few MB then fault their pages in again: 3,500 page faults a step of the chapter's in
    bfloat16, 200 with the memory kept. Returns False where the C library is not glibc.
    """
    if platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library, e.g. musl
        return False
    kept = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(kept)
