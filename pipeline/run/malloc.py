"""glibc's allocator, tuned for a few threads passing frames along (`thermoscreen run`)."""

from __future__ import annotations

import ctypes
import sys

M_ARENA_MAX = -8  # glibc mallopt parameters
M_MMAP_THRESHOLD = -3
M_TOP_PAD = -2


def tune_malloc(
    arenas: int = 1, mmap_threshold_bytes: int = 4 << 20, top_pad_bytes: int = 8 << 20
) -> bool:
    """One arena: a frame freed by the publisher thread is reused by the capture thread instead
    of sitting in another thread's own heap, which keeps the peak resident memory down.

    Frame-sized blocks stay in the heap and are reused: a float32 DMR-IR matrix (1.2 MB), its
    decompressed text (2-3 MB) and the rendering's scratch buffers are all under the 4 MB mmap
    threshold, and the 8 MB top pad keeps free room at the top of the heap to cut them from.
    With a 1 MB threshold and no pad, each of them was mapped afresh, faulted in page by page
    and handed back to the system when freed, several times a frame (`tests/integration/
    test_malloc_faults.py` counts it). Blocks of 4 MB and more (ONNX Runtime's load-time
    copies of large weights) still come from mmap and go back to the system when freed; a
    lower threshold made every frame fault in fresh pages. The pad is address space, resident
    only once used. docs/benchmark.md has the measurements. False where the C library is not
    glibc (musl, macOS): nothing to tune there."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return (
            bool(libc.mallopt(M_ARENA_MAX, arenas))
            and bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold_bytes))
            and bool(libc.mallopt(M_TOP_PAD, top_pad_bytes))
        )
    except (OSError, AttributeError):
        return False
