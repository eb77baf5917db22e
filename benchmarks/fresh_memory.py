"""How long touching freshly allocated host memory takes, by how long it lay free before.

Allocates and writes ``--gb`` GB (a NumPy array: glibc maps it fresh, and it is unmapped when
freed), frees it, waits, and does it again; the waits alternate in rounds and the table gives
medians. On an ordinary machine the time does not depend on the wait. On a virtual machine whose
balloon device reports free pages to the host (virtio-balloon's free page reporting, a feature of
Firecracker and QEMU guests), the guest hands pages that stayed free for about two seconds back
to the host, and writing them again makes the host fault them in: touching memory becomes many
times slower. That is the cost our train step pays beside PyTorch in ``bench_model.py``, where
each side's memory lies free while the other runs (BENCHMARKS.md).

    python benchmarks/fresh_memory.py
    python benchmarks/fresh_memory.py --smoke
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import command_line  # noqa: E402

BALLOON_ID = "0x0005"  # virtio device id of a memory balloon
REPORTING_BIT = 5  # VIRTIO_BALLOON_F_REPORTING


def free_page_reporting(root: str = "/sys/bus/virtio/devices") -> str:
    """Whether this machine's virtio balloon reports free pages to its host, in words (the
    device's ``features`` file: one character per feature bit, bit 0 first)."""
    for dev in sorted(glob.glob(f"{root}/*")):
        try:
            with open(f"{dev}/device") as f:
                if f.read().strip() != BALLOON_ID:
                    continue
            with open(f"{dev}/features") as f:
                bits = f.read().strip()
        except OSError:
            continue
        on = len(bits) > REPORTING_BIT and bits[REPORTING_BIT] == "1"
        return f"virtio balloon with free page reporting {'on' if on else 'off'}"
    return "no virtio balloon"


def touch(n_floats: int) -> float:
    """Seconds to allocate and write ``n_floats`` float32 values (the array is freed on return)."""
    start = time.perf_counter()
    a = np.empty(n_floats, np.float32)
    a.fill(1.0)
    elapsed = time.perf_counter() - start
    del a
    return elapsed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0, help="memory touched per call, GB")
    ap.add_argument("--waits", default="0,0.2,1,2.5,4", help="seconds the memory lies free, comma-separated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="seconds: 64 MB, waits 0 and 0.1, 2 rounds")
    args = ap.parse_args(argv)
    gb, rounds, waits = args.gb, args.rounds, [float(w) for w in args.waits.split(",")]
    if args.smoke:
        gb, rounds, waits = 1 / 16, 2, [0.0, 0.1]
    if gb <= 0 or rounds < 1 or any(w < 0 for w in waits):
        ap.error("--gb and --rounds must be positive and every wait >= 0")
    n = int(gb * 2**30) // 4
    touch(n)  # the first touch of all
    times = {w: [] for w in waits}
    for _ in range(rounds):
        for w in waits:
            time.sleep(w)
            times[w].append(touch(n))
    print(f"command: {command_line()}")
    print(f"{os.cpu_count()} CPUs; {free_page_reporting()}; {gb:g} GB allocated and written per call, "
          f"medians of {rounds} rounds\n")
    print("| memory free for s | write s | GB/s | slowest s |")
    print("|---|---|---|---|")
    for w in waits:
        med = statistics.median(times[w])
        print(f"| {w:g} | {med:.3f} | {gb / med:.1f} | {max(times[w]):.3f} |")


if __name__ == "__main__":
    main()
