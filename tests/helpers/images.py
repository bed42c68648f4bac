"""Image files for tests that a camera would never send: built byte by byte, never decoded."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def flat_png(path: Path, width: int, height: int) -> Path:
    """A valid 8-bit gray PNG of one flat colour, written row by row: a 16000x16000 one takes a
    few hundred kilobytes on disk and a quarter gigabyte or more once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path
