"""Process-wide CPU machinery of the S4 fast paths, in one place: the channel-chunk thread pool (`run_chunks`, which
sets and restores torch's thread counts), per-thread scratch buffers (`Scratch`), the huge-page hint for big
buffers (`empty_huge`, madvise) and the allocator setting of a training process (`retain_freed_memory`). Only the S4
kernels, the fused core and the training module use them.
"""

from __future__ import annotations

import math
import threading

import torch


class Scratch(threading.local):
    """Per-thread scratch buffers for one kernel call: chunk after chunk reuses the same memory (fresh temporaries
    per chunk cost page faults and cold caches). Not for FFT outputs: torch's fft with out= computes into a temporary
    and copies. `get(name, shape, dtype)` is a view of the named buffer (grown when needed); buffers with different
    names never alias. Freed with the object (end of the call). Figures: bench/history.md."""

    def __init__(self, device) -> None:
        self.device, self.bufs = device, {}

    def get(self, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self.bufs[name] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)


_MADVISE: list = []  # [libc.madvise or None], resolved on first use


def empty_huge(*shape: int, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty for the big per-call CPU buffers (k, e1, e2: 48 MB each at the paper size), advised to use
    transparent huge pages on Linux: their first touch then faults 2 MB pages instead of 4 KB ones (5x faster first
    touch, bench/history.md). Only a hint: where madvise is unavailable or refuses, the buffer is a plain
    torch.empty."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    if out.device.type != "cpu" or nbytes < 1 << 23:
        return out
    if not _MADVISE:
        try:
            import ctypes
            import sys

            libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
            if libc is not None:
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _MADVISE.append(libc.madvise if libc is not None else None)
        except (OSError, AttributeError):
            _MADVISE.append(None)
    if _MADVISE[0] is not None:
        huge = 1 << 21
        lo = (out.data_ptr() + huge - 1) & ~(huge - 1)
        hi = (out.data_ptr() + nbytes) & ~(huge - 1)
        if hi > lo:
            _MADVISE[0](lo, hi - lo, 14)  # MADV_HUGEPAGE; the return code is ignored (a hint)
    return out


_RETAINED: list = []  # [True] once retain_freed_memory() has run in this process


def retain_freed_memory(limit: int = 1 << 30) -> bool:
    """Process-wide, glibc only: keep freed blocks of up to `limit` bytes (default 1 GiB) for reuse instead of
    handing them back to the kernel (mallopt M_MMAP_THRESHOLD and M_TRIM_THRESHOLD). A training step allocates
    and frees the same big tensors every time (activations, spectra, gradients: 48 MB each at the LVU size); above
    glibc's default threshold each is a fresh mmap whose every 4 KB page faults again on first touch. Measured
    here (bench/step.py's setting, one thread, A/B alternating in one process): 111,000 page faults and 0.72 s of
    system time per step -> 0 and 0.02 s, the step's CPU time 6.75 -> 6.14 s; peak RSS +0.06 GB. Called by the
    training module (`HeadModule.setup`) and the benchmarks that time its step. True when applied (or already);
    False where there is no glibc (the call is then a no-op)."""
    if _RETAINED:
        return True
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
        ok = libc.mallopt(M_MMAP_THRESHOLD, int(limit)) == 1 and libc.mallopt(M_TRIM_THRESHOLD, int(limit)) == 1
    except (OSError, AttributeError):
        return False
    if ok:
        _RETAINED.append(True)
    return ok


def run_chunks(fn, H: int, chunk: int, device) -> None:
    """Call fn(lo, hi) over channel chunks. On CPU with T > 1 torch threads, T Python threads each take whole
    chunks with ONE intra-op thread: coarse-grained parallelism needs no per-op OpenMP barrier, so it keeps both
    cores busy even when other jobs share them (per-op barriers wait for a descheduled worker: bench/history.md).
    Chunks write disjoint slices."""
    spans = [(lo, min(H, lo + chunk)) for lo in range(0, H, chunk)]
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or threads <= 1 or len(spans) < 2:
        for lo, hi in spans:
            fn(lo, hi)
        return
    from concurrent.futures import ThreadPoolExecutor

    grad_mode = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()  # Lightning validates under inference_mode: tensors made there
    # are inference tensors, and a worker thread not in that mode may not write into them

    def init() -> None:
        torch.set_num_threads(1)  # OpenMP's thread count is per calling thread: this worker only
        torch.set_grad_enabled(grad_mode)

    def call(lo: int, hi: int) -> None:
        if not inference:  # NB inference_mode(False) would switch grad mode ON: enter it only when needed
            return fn(lo, hi)
        with torch.inference_mode():
            fn(lo, hi)

    try:
        with ThreadPoolExecutor(min(threads, len(spans)), initializer=init) as pool:
            for future in [pool.submit(call, lo, hi) for lo, hi in spans]:
                future.result()
    finally:
        torch.set_num_threads(threads)  # MKL's count is process-wide: restore it
