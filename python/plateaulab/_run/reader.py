"""Reading ahead: a worker thread opens, checks and stages block k+1 while block k is probed."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import StoreError
from ..store import check_block_against_dataset, count_nonfinite, verify_block
from .parts import block_fingerprint
from .plan import PlannedBlock


@dataclass
class Loaded:
    """One block as the reader hands it to the loop: opened, verified, checked and (maybe) staged."""

    block: object
    x_train: object
    x_test: object
    x_val: object
    fingerprint: dict      # what the block's part records of its source (see parts.block_fingerprint)
    verified: bool         # every split was checked (False: --no-verify, or block.json lacks a split's checksum)


def refuse_nonfinite(block, split: str, n_bad: int) -> None:
    if n_bad:
        raise StoreError(f"{block.where}: {split} features contain {n_bad} NaN/Inf values; "
                         "fix or re-extract this block (fp16 overflow is a common cause)")


class BlockReader:
    """Opens, checks and stages the blocks of a run in order, one block ahead in a worker thread.

    ``iterate`` yields (planned block, Loaded, seconds waited for it). Each block's checksums are
    verified here, in the reader thread, as it is read (``verify``). A block whose check fails raises
    its StoreError when the loop reaches it, so every earlier block is probed and written first,
    exactly as without read-ahead.
    """

    def __init__(self, store, ds_cache, task_cache, use_val: bool, stage, prefetch: bool, verify: bool = True,
                 labels_fp: dict | None = None):
        self.store, self.ds_cache = store, ds_cache
        self.use_val, self.stage = use_val, stage
        self.verify, self.labels_fp = verify, labels_fp or {}
        # The train rows any task of a dataset uses: the same for every block of that dataset.
        self.needed = {name: np.unique(np.concatenate([t.indices for t in tasks]))
                       for name, tasks in task_cache.items() if tasks}
        self.pool = None
        if prefetch:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plateaulab-reader")

    def load(self, b: PlannedBlock) -> Loaded:
        """Open, verify and check one block; where the backend stages, stage it (it counts NaN/Inf on
        the device as it goes, so the host does not scan the splits a second time). The block's
        fingerprint is taken before its arrays are read, so it describes what was read."""
        ds = self.ds_cache[b.dataset]
        fingerprint = block_fingerprint(self.store, b, self.labels_fp.get(b.dataset))
        block = self.store.block(b.checkpoint, b.dataset, b.layer)
        check_block_against_dataset(block, ds)
        verified = verify_block(block) if self.verify else False
        if self.use_val and block.val is None:
            raise StoreError(f"{block.where}: " + "{param} 'val' needs val features, and this block has none",
                             param="select")
        needed = self.needed[b.dataset]
        x_train, x_test, x_val = block.train, block.test, (block.val if self.use_val else None)
        if self.stage is None:
            for split, x in (("train", block.train[needed] if needed.size else block.train),
                             ("test", block.test), ("val", block.val)):
                if x is not None:
                    refuse_nonfinite(block, split, count_nonfinite(np.asarray(x)))
            return Loaded(block, x_train, x_test, x_val, fingerprint, verified)
        x_train, x_test, x_val = self.stage(x_train, needed, x_test, x_val)
        for split, staged in (("train", x_train), ("test", x_test), ("val", x_val)):
            refuse_nonfinite(block, split, getattr(staged, "nonfinite", 0))
        if not self.use_val and block.val is not None:   # not staged, still checked
            refuse_nonfinite(block, "val", count_nonfinite(np.asarray(block.val)))
        return Loaded(block, x_train, x_test, x_val, fingerprint, verified)

    def iterate(self, todo):
        if self.pool is None:
            for b in todo:
                t0 = time.perf_counter()
                loaded = self.load(b)
                yield b, loaded, time.perf_counter() - t0
            return
        ahead = self.pool.submit(self.load, todo[0]) if todo else None
        for i, b in enumerate(todo):
            t0 = time.perf_counter()
            loaded = ahead.result()               # re-raises this block's StoreError here
            waited = time.perf_counter() - t0
            ahead = self.pool.submit(self.load, todo[i + 1]) if i + 1 < len(todo) else None
            yield b, loaded, waited

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
