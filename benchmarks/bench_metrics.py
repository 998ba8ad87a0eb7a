"""Time `bilma.evaluation.metrics.retrieval_metrics` on CUHK-PEDES-sized problems (2 CPU threads).

Gallery: 3,074 images of 1,000 ids (about 3 each); queries: 2 captions per image plus a few
third captions = 6,156 (the CUHK-PEDES test split), and ten times as many queries (61,560 x
3,074). Similarities are random float32 with a boost for positives (R1 around CUHK's range).
Reports the median (and minimum) of 5 runs after a warm-up, and the peak extra resident
memory of one call in a fresh process (VmHWM after malloc_trim and resetting it through
/proc/self/clear_refs; else the ru_maxrss delta), once with glibc mmapping every block above
128 KiB (the peak of live tensor memory) and once with glibc's defaults.
For reference it also times one full stable sort of the 6,156 x 3,074 matrix (what a
sort-based `rank` needs before any metric).

`--load` times only the 6,156 x 3,074 problem with 1 and 2 torch threads, on the machine as
it is ("idle") and with one busy-loop process per core ("loaded"), 1 warm-up then 5 runs each.
It also runs against an older `retrieval_metrics` without a `threads` argument (then the
threads are set with `torch.set_num_threads`), for a before/after comparison.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import inspect
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from bilma.evaluation.metrics import format_metrics, retrieval_metrics

N_IDS, N_GALLERY, N_QUERY = 1000, 3074, 6156
RUNS = 5


def cuhk_like(n_query_factor: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Similarity [N_QUERY * factor, N_GALLERY] float32, query pids, gallery pids."""
    rng = np.random.default_rng(seed)
    gallery_pids = np.concatenate(
        [np.arange(N_IDS), np.arange(N_IDS), np.arange(N_IDS), rng.integers(0, N_IDS, 74)]
    )
    gallery_pids = np.sort(gallery_pids)  # images of one id next to each other, as on disk
    captions_of = np.concatenate([np.arange(N_GALLERY), np.arange(N_GALLERY)])
    captions_of = np.concatenate([captions_of, rng.choice(N_GALLERY, N_QUERY - 2 * N_GALLERY)])
    query_pids = np.tile(gallery_pids[np.sort(captions_of)], n_query_factor)
    g = torch.from_numpy(gallery_pids)
    sim = torch.empty(len(query_pids), N_GALLERY, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    for s in range(0, len(query_pids), 256):  # fill in small blocks: small temporaries
        block = sim[s : s + 256]
        block.normal_(0.0, 0.1, generator=gen)
        q = torch.from_numpy(query_pids[s : s + 256])
        block[q[:, None] == g[None, :]] += 0.32  # positives: normal(0.32, 0.1)
    return sim, query_pids, gallery_pids


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_free_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so that reusing it shows in the peak."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_extra_mb(fn) -> tuple[float, str]:
    """Peak resident memory above the current one while running fn(), in MB."""
    gc.collect()
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        base = _status_kb("VmRSS")
        fn()
        peak = _status_kb("VmHWM")
        if base is not None and peak is not None:
            return (peak - base) / 1024, "VmHWM"
    except OSError:
        pass
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) / 1024, "ru_maxrss delta (lower bound)"


def settle(fn, max_runs: int = 10) -> None:
    """Warm up until two consecutive runs agree within 10%.

    On this VM, memory-bound code runs several times slower for a few seconds after a large
    allocation (here: generating the similarity); timing before that passes is noise.
    """
    prev = None
    for _ in range(max_runs):
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        if prev is not None and abs(t - prev) <= 0.1 * prev:
            return
        prev = t


def time_it(fn) -> tuple[float, float]:
    """Median and minimum seconds of RUNS runs after a warm-up."""
    settle(fn)
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def bench(factor: int, chunks: tuple[int, ...]) -> None:
    """Print one line per chunk size for the problem with `factor` x 6,156 queries."""
    sim, q, g = cuhk_like(factor)
    shape = f"{sim.shape[0]:,} x {sim.shape[1]:,}"
    runs, timings = {}, {}  # timings first, then memory, each in a fresh process
    for chunk in chunks:
        result: dict[str, float] = {}

        def run(chunk: int = chunk, result: dict[str, float] = result) -> None:
            result.update(retrieval_metrics(sim, q, g, chunk=chunk))

        runs[chunk] = (run, result)
        timings[chunk] = time_it(run)
    if factor == 1:
        sort_s, _ = time_it(lambda: torch.sort(sim, dim=1, descending=True, stable=True))
    how = ""
    for chunk, (_, result) in runs.items():
        live, how = memory_in_subprocess(factor, chunk, fixed_mmap=True)
        default, _ = memory_in_subprocess(factor, chunk, fixed_mmap=False)
        med, best = timings[chunk]
        print(
            f"{shape:>15}  {chunk:>5}  {med:>8.3f}  {best:>6.3f}  {live:>7.1f}  {default:>7.1f}  "
            f"{format_metrics(result)}"
        )
    print(f"#   input {sim.numel() * 4 / 2**20:.0f} MB float32; memory measured as {how}")
    if factor == 1:
        print(f"#   reference: one full stable torch.sort of this matrix: {sort_s:.3f} s")


def memory_in_subprocess(factor: int, chunk: int, fixed_mmap: bool) -> tuple[float, str]:
    """Peak extra memory of one call, measured in a fresh process (a clean heap).

    With `fixed_mmap`, glibc mmaps every block above 128 KiB and unmaps it on free
    (MALLOC_MMAP_THRESHOLD_), so the RSS peak is the peak of live tensor memory. With glibc's
    default (dynamic) threshold, freed blocks stay resident and may or may not be reused, so
    the same call peaks anywhere between that and ~40 MB more, from process to process.
    """
    env = dict(os.environ)
    if fixed_mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    out = subprocess.run(
        [sys.executable, __file__, "--memory", str(factor), str(chunk)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.split("\t")
    return float(out[0]), out[1].strip()


def memory_main(factor: int, chunk: int) -> int:
    """Child process: build the problem, call once (loads code), then measure one call."""
    torch.set_num_threads(2)
    sim, q, g = cuhk_like(factor)
    retrieval_metrics(sim, q, g, chunk=chunk)
    mem, how = peak_extra_mb(lambda: retrieval_metrics(sim, q, g, chunk=chunk))
    print(f"{mem}\t{how}")
    return 0


@contextlib.contextmanager
def busy_cores(n: int):
    """`n` processes that each keep one core busy, for the duration."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(1.0)  # let them reach the run queue
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def metrics_with_threads(sim, q, g, threads: int) -> dict[str, float]:
    """retrieval_metrics on `threads` torch threads (also for versions without the argument)."""
    if "threads" in inspect.signature(retrieval_metrics).parameters:
        return retrieval_metrics(sim, q, g, threads=threads)
    torch.set_num_threads(threads)
    return retrieval_metrics(sim, q, g)


def load_main() -> None:
    """Median and min seconds of the CUHK-sized call with 1 and 2 threads, idle and loaded."""
    sim, q, g = cuhk_like(1)
    print(
        f"{'load':>6}  {'threads':>7}  {'median s':>8}  {'min s':>6}  {'loadavg 1 min':>13}  metrics"
    )
    for load in ("idle", "loaded"):
        ctx = busy_cores(os.cpu_count() or 1) if load == "loaded" else contextlib.nullcontext()
        with ctx:
            for threads in (1, 2):
                result = metrics_with_threads(sim, q, g, threads)  # warm-up
                times = []
                for _ in range(RUNS):
                    t0 = time.perf_counter()
                    metrics_with_threads(sim, q, g, threads)
                    times.append(time.perf_counter() - t0)
                torch.set_num_threads(2)
                avg = os.getloadavg()[0]
                print(
                    f"{load:>6}  {threads:>7}  {statistics.median(times):>8.3f}  "
                    f"{min(times):>6.3f}  {avg:>13.1f}  {format_metrics(result)}",
                    flush=True,
                )


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--memory":
        return memory_main(int(sys.argv[2]), int(sys.argv[3]))
    torch.set_num_threads(2)
    print(f"# bench_metrics  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"# machine: nproc={os.cpu_count()}, {platform.platform()}, "
        f"python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {np.__version__}"
    )
    if sys.argv[1:] == ["--load"]:
        load_main()
        return 0
    print(f"# median of {RUNS} runs after a warm-up; memory: peak extra RSS of one call in a fresh")
    print("# process; 'live': glibc mmaps blocks > 128 KiB (= live tensors); 'rss': glibc default")
    print(
        f"{'problem':>15}  {'chunk':>5}  {'median s':>8}  {'min s':>6}  {'live MB':>7}  "
        f"{'rss MB':>7}  metrics"
    )
    for factor, chunks in ((1, (256, 1024, 4096)), (10, (1024,))):
        bench(factor, chunks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
