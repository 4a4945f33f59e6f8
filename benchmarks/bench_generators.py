"""Members per second of the built-in generators, with the machine described.

Run: ``python benchmarks/bench_generators.py [--quick]``. Each figure is the best of a few
repeats (the machines are shared and noisy); drops is timed end to end, channels includes the
MCMC (burn-in and all tempering levels), which dominates it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from sense_core.generators import generate_with_info


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if "model name" in line]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.platform()}, Python {platform.python_version()}, {cpu}, {usable} cores"


def members_per_second(name: str, n: int, size: int, repeats: int, **options) -> tuple[float, dict]:
    best = float("inf")
    info = None
    for _ in range(repeats):
        started = time.perf_counter()
        _, info = generate_with_info(name, n, size, 0.05, seed=0, progress_bar=False, **options)
        best = min(best, time.perf_counter() - started)
    return n / best, info.stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller ensembles, one repeat")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    print(describe_machine())
    for size in (64, 128):
        n = (2000 if args.quick else 10000) // (size // 64) ** 2
        rate, _ = members_per_second("drops", n, size, repeats)
        print(f"drops     {size:>3}x{size:<3} n={n:>6}: {rate:>9,.0f} members/s")
    for size in (64, 128):
        n = 1000 if args.quick else 5000
        rate, stats = members_per_second("channels", n, size, 1)
        print(
            f"channels  {size:>3}x{size:<3} n={n:>6}: {rate:>9,.0f} members/s "
            f"(acceptance {stats['acceptance_rate']:.3f}, swaps {stats['swap_acceptance']:.2f}, "
            f"MCMC {stats['mcmc_seconds']:.1f} s)"
        )


if __name__ == "__main__":
    main()
