"""Size of a launch's code snapshot of this checkout and the time to make it and to reuse it.

    .venv/bin/python benchmarks/bench_snapshot.py [--repeat 5]

Each round makes the snapshot in a fresh temporary study (list the package's files with git,
hash them, copy them, write the manifest), then asks for it again in the same study (hash
only: the same code reuses the copy). The copy's size is its files' bytes and the disk
blocks `du` counts.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bilma.sweep.snapshot import make_snapshot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    made, reused = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            snap = make_snapshot(Path(tmp) / "study")
            made.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            again = make_snapshot(Path(tmp) / "study")
            reused.append(time.perf_counter() - t0)
            assert again.reused and again.id == snap.id
            du = subprocess.run(["du", "-sk", str(snap.path)], capture_output=True, text=True)
            disk_kib = int(du.stdout.split()[0])
            m = snap.manifest
    print(f"snapshot {m['id']} of {m['from']} ({m['source']}, commit {m['commit']})")
    print(f"files {m['files']}, bytes {m['bytes']:,}, on disk {disk_kib:,} KiB (du)")
    print(
        f"make:  median {statistics.median(made) * 1000:.0f} ms "
        f"(min {min(made) * 1000:.0f}, max {max(made) * 1000:.0f}, n={len(made)})"
    )
    print(
        f"reuse: median {statistics.median(reused) * 1000:.0f} ms "
        f"(min {min(reused) * 1000:.0f}, max {max(reused) * 1000:.0f}, n={len(reused)})"
    )


if __name__ == "__main__":
    main()
