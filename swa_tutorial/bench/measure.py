"""Measuring: time, peak memory, the useful work done, and the device's peak for comparison.

Time: ``torch.utils.benchmark`` on the CPU (with its thread count), ``triton.testing.do_bench``
on a GPU (CUDA events when Triton is missing). Memory: on a GPU the increment of
``torch.cuda.max_memory_allocated``; on the CPU the increment of the process's peak resident
memory (Linux resets the peak on request: ``/proc/self/clear_refs``), which counts everything
the call touched, PyTorch's allocations and any other.
"""

from __future__ import annotations

import ctypes
import statistics

import torch
import torch.utils.benchmark as benchmark


def resolve_device(name) -> torch.device:
    """``name`` as a torch.device that this machine has, or a ValueError saying why not."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1, ...): {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"--device {name}: CUDA is not available ({why}, torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only cpu and cuda devices are measured")
    return device


def band_pairs(seq_len: int, window: int) -> int:
    """N, the number of (query, key) pairs in the band |i - j| <= w of an L x L matrix.

    Row i has min(L - 1, i + w) - max(0, i - w) + 1 keys: 2w + 1 in the middle, and the first and
    last w rows lose w, w - 1, ..., 1 keys, so N = L (2w + 1) - w (w + 1) for w <= L - 1 (a wider
    window sees no more keys: N = L^2).
    """
    w = min(window, seq_len - 1)
    return seq_len * (2 * w + 1) - w * (w + 1)


def useful_flops(batch: int, heads: int, seq_len: int, window: int, head_dim: int, backward: bool) -> int:
    """The floating-point operations the band itself needs: 4 B H N d for the forward pass.

    Each of the N pairs costs a d-long dot product for its score (2d: multiply and add) and a
    d-long multiply-add of its value (2d). The backward pass needs two products per forward
    product (dS and dQ, dK from the scores; dP and dV from the values), so forward + backward
    counts 3 times the forward. Work an implementation does beyond the band (the zeros of dense
    attention, the overlap of the chunks) is not useful and is not counted.
    """
    return 4 * batch * heads * band_pairs(seq_len, window) * head_dim * (3 if backward else 1)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says the device ran out of memory (then it is a result, not a crash)."""
    text = str(error)
    return isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or any(
        s in text for s in ("out of memory", "can't allocate memory", "Cannot allocate memory")
    )


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Context manager: ``.bytes`` is the peak memory of the block above the memory at its start.

    CUDA: the increment of ``torch.cuda.max_memory_allocated``. CPU: the increment of the peak
    resident set size (Linux only; ``.bytes`` is None where it cannot be measured).
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.bytes = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            _release_free_heap()
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset the peak resident set size to the current one
                self._start = _proc_status_kib("VmRSS")
            except OSError:
                self._start = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self._start is not None:
            self.bytes = (_proc_status_kib("VmHWM") - self._start) * 1024
        return False


def _release_free_heap() -> None:
    """Give memory that malloc keeps for reuse back to the system (glibc), so that the next peak
    of resident memory counts every buffer the measured call needs, not only those that did not
    fit in what an earlier call left behind."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing kept to release, or no way to
        pass


def time_call(fn, device: torch.device, threads: int, min_time: float, min_reps: int, first_s: float) -> list[float]:
    """Repeated timings of ``fn()`` in seconds, after warm-up; at least ``min_reps`` of them.

    ``first_s`` is the time of one call already made (it sets how long to measure).
    """
    device = torch.device(device)
    if device.type == "cuda":
        reps = max(min_reps, min(1000, int(min_time / max(first_s, 1e-6))))
        try:
            from triton.testing import do_bench

            rep_ms = 1e3 * max(min_time, 1.2 * min_reps * first_s)
            return [t / 1e3 for t in do_bench(fn, warmup=25, rep=rep_ms, return_mode="all")]
        except (ImportError, AssertionError, ValueError):  # no Triton, or one without return_mode="all"
            return _time_cuda_events(fn, reps)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    times = []
    while len(times) < min_reps:  # each block of calls gives one time per call, averaged
        m = timer.blocked_autorange(min_run_time=max(min_time, 1.05 * min_reps * first_s))
        times += [t / m.number_per_run for t in m.raw_times]
    return times


def _time_cuda_events(fn, reps: int) -> list[float]:
    fn()  # warm-up
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def quartiles(times: list[float]) -> tuple[float, float, float]:
    """The first quartile, the median and the third quartile of repeated timings."""
    if len(times) < 2:
        return times[0], times[0], times[0]
    return tuple(statistics.quantiles(times, n=4, method="inclusive"))


def summarize(times: list[float]) -> dict:
    """Median and interquartile range of repeated timings (seconds)."""
    q1, median, q3 = quartiles(times)
    return {"median_s": median, "iqr_s": q3 - q1, "times_s": times}


def compare(times_a: list[float], times_b: list[float]) -> dict:
    """How many times slower a is than b, from two lists of timings of one run.

    ``ratio`` is median(a) / median(b); ``low`` and ``high`` are the ratios the quartiles allow,
    q1(a) / q3(b) and q3(a) / q1(b). When 1 lies between them the two interquartile ranges
    overlap and the difference is ``within_noise``: this run cannot tell which is faster. (A
    plain rule, not a confidence interval: the timings of a shared machine are not independent
    draws.)
    """
    a1, a, a3 = quartiles(times_a)
    b1, b, b3 = quartiles(times_b)
    low, high = a1 / b3, a3 / b1
    return {"ratio": a / b, "low": low, "high": high, "within_noise": low <= 1 <= high}


def matmul_peak(device, dtype, threads: int, n: int) -> dict:
    """The device's attainable rate: an n x n x n matrix product (2 n^3 operations), timed."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    fn = lambda: torch.mm(a, b)  # noqa: E731
    fn()
    times = time_call(fn, device, threads, min_time=1.0, min_reps=5, first_s=0.0)
    stats = summarize(times)
    return {"n": n, "flops": 2 * n**3, "flops_per_s": 2 * n**3 / stats["median_s"], **stats}
