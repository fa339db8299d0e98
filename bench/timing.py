"""Side-by-side timing shared by the benchmarks."""
import time


def interleaved(fns: dict, reps: int, sync) -> dict:
    "Median seconds of each of `fns`, run in turns (A, B, C, A, B, C, ...) after one warm-up each."
    for f in fns.values():
        f()
    sync()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}
