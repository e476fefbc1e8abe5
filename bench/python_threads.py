"""make bench: decompression from several Python threads at once.

The library releases the GIL while it decodes, so N Python threads that each
decode their own stream (threads=1 per call: one core each) should finish N
streams in about the time one takes, up to the machine's cores. Prints, per
thread count, the wall time of N decodes, the restored fp16 bytes per second
and the speed-up over one thread.

usage: python bench/python_threads.py CALIBRATION STREAM [--max-threads N] [--repeat R]
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import kvtc


def wall_of(calibration, data, n_threads: int, repeat: int) -> float:
    """Best wall time over `repeat` rounds of n_threads threads decoding at once."""
    best = float("inf")
    for _ in range(repeat):
        failures = []

        def work():
            try:
                kvtc.decompress(calibration, data, threads=1)
            except BaseException as e:  # re-raised below
                failures.append(e)

        threads = [threading.Thread(target=work) for _ in range(n_threads)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = min(best, time.perf_counter() - start)
        if failures:
            raise failures[0]
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("calibration")
    ap.add_argument("stream")
    ap.add_argument("--max-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    calibration = kvtc.Calibration.read(a.calibration)
    data = open(a.stream, "rb").read()
    info = kvtc.stream_info(data)
    shape = calibration.shape
    fp16 = info.n_tokens * shape.n_layer * shape.n_kv_head * shape.head_dim * 2 * 2
    print(f"stream: {a.stream}, {info.n_tokens} tokens, {len(data)} bytes; "
          f"restored fp16 {fp16 / 1e6:.1f} MB; {os.cpu_count()} CPUs; threads=1 per call")
    print(f"{'threads':>7} {'decodes':>7} {'wall ms':>9} {'MB/s fp16':>10} {'speed-up':>9}")
    kvtc.decompress(calibration, data, threads=1)  # warm: pages, allocator
    one = None
    n = 1
    while n <= a.max_threads:
        wall = wall_of(calibration, data, n, a.repeat)
        rate = n * fp16 / wall / 1e6
        one = one or rate
        print(f"{n:>7} {n:>7} {wall * 1e3:>9.1f} {rate:>10.1f} {rate / one:>8.2f}x")
        n *= 2
        if n > a.max_threads and n // 2 < a.max_threads:
            n = a.max_threads  # the machine's own count last
    print("speed-up: restored bytes per second with N threads over one thread's")


if __name__ == "__main__":
    main()
