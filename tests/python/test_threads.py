"""Several Python threads decompressing at once (the GIL is released in the
library) give exactly the single-threaded results."""
from __future__ import annotations

import threading
import time

import numpy as np

import kvtc
from conftest import random_cache


def test_parallel_decompress(calibration):
    streams, expected = [], []
    for seed in range(8):
        k, v = random_cache(40 + seed, tokens=800)
        data = kvtc.compress(calibration, k, v)
        streams.append(data)
        expected.append(kvtc.decompress(calibration, data, threads=1))
    results, failures = {}, []

    def work(i):
        try:
            for _ in range(3):
                results[i] = kvtc.decompress(calibration, streams[i], threads=1)
        except BaseException as e:  # reported below
            failures.append(e)

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    assert not failures, failures
    for i, (k, v) in enumerate(expected):
        assert np.array_equal(results[i][0], k) and np.array_equal(results[i][1], v)
    print(f"8 threads x 3 decompressions: {wall:.2f} s wall")  # information, not asserted
