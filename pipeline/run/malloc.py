"""glibc's allocator, tuned for a few threads passing frames along (`thermoscreen run`)."""

from __future__ import annotations

import ctypes
import sys

M_ARENA_MAX = -8  # glibc mallopt parameters
M_MMAP_THRESHOLD = -3


def tune_malloc(arenas: int = 1, mmap_threshold_bytes: int = 1 << 20) -> bool:
    """One arena: a frame freed by the publisher thread is reused by the capture thread instead
    of sitting in another thread's own heap, which keeps the peak resident memory down. Blocks
    of 1 MB and more (ONNX Runtime's load-time copies) come from mmap and go back to the OS when
    freed; frames and tensors stay in the heap and are reused, where a lower threshold made
    every frame fault in fresh pages. `thermoscreen bench` measures the effect (see the
    README's benchmark notes). False where the C library is not glibc (musl, macOS): nothing
    to tune there."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas)) and bool(
            libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold_bytes)
        )
    except (OSError, AttributeError):
        return False
