"""Checksums of feature arrays: what block.json records and what a run verifies as it reads a block.

Two algorithms, each over an array's data bytes in C order (not the .npy header):

- ``xxh3_64`` (XXH3, 64 bits, from the ``xxhash`` package), written as 16 lower-case hex digits.
  New blocks record it. Chosen by measurement (bench/bench_checksum.py, bench/RESULTS.md): it runs at
  about 20 GB/s here, so verifying a reference block costs about 0.1 % of probing it on the cpu
  backend, against about 0.6 % for zlib's CRC-32, and it stays small next to a GPU's block time.
- ``crc32`` (zlib's CRC-32), an integer: what stores written before it record. Still verified.
"""

from __future__ import annotations

import zlib

import numpy as np

from ..errors import StoreError

#: The algorithm new blocks record.
DEFAULT = "xxh3_64"
#: Every algorithm a block.json may record, strongest (and preferred for verifying) first.
ALGORITHMS = ("xxh3_64", "crc32")


def _bytes(array: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(array)).cast("B")


def array_checksum(array: np.ndarray, algorithm: str = DEFAULT):
    """The checksum of an array's data bytes as block.json records it (hex str or int)."""
    if algorithm == "xxh3_64":
        import xxhash

        return f"{xxhash.xxh3_64_intdigest(_bytes(array)):016x}"
    if algorithm == "crc32":
        return zlib.crc32(_bytes(array)) & 0xFFFFFFFF
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def array_crc32(array: np.ndarray) -> int:
    """CRC-32 of an array's data bytes (C order), as stores of format version 1 before XXH3 record it."""
    return array_checksum(array, "crc32")


def recorded(info: dict, split: str):
    """(algorithm, value) of the checksum block.json records for ``split``, or (None, None)."""
    for algorithm in ALGORITHMS:
        value = (info.get(algorithm) or {}).get(split)
        if value is not None:
            return algorithm, value
    return None, None


def verify_block(block) -> bool:
    """Check every split of ``block`` against the checksum its block.json records; raise naming the
    block and file on a mismatch. Returns True only when every split the block stores was checked:
    False when block.json records no checksum for one or more of them (those were not checked; the
    others still were), which a run warns about and counts as an unverified block."""
    complete = True
    for split in ("train", "test", "val"):
        x = getattr(block, split)
        if x is None:
            continue
        algorithm, want = recorded(block.info, split)
        if algorithm is None:
            complete = False
            continue
        got = array_checksum(x, algorithm)
        if got != want:
            raise StoreError(
                f"{block.where}: {split}.npy fails its {algorithm} check (block.json records {want!r}, the "
                f"file's data gives {got!r}): the file changed after it was written or is corrupt; "
                "re-extract this block"
            )
    return complete
