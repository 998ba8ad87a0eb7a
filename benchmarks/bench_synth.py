"""Time `bilma.data.synth.generate`: 1,000 identities x 4 images at 384x128, workers 1 and 2.

Prints the machine, the date and a table of seconds and images/s per worker count.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

from bilma.data.synth import generate

IDS, IMAGES_PER_ID = 1000, 4


def main() -> int:
    print(f"# bench_synth  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"# machine: nproc={os.cpu_count()}, {platform.platform()}, python {platform.python_version()}"
    )
    print(f"# {IDS} identities x {IMAGES_PER_ID} images, 384x128, JPEG + 3 parse maps each")
    rows = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
            stats = generate(
                Path(tmp) / "synth",
                ids=IDS,
                images_per_id=IMAGES_PER_ID,
                workers=workers,
                progress=False,
            )
        rows.append((workers, stats["images"], stats["seconds"], stats["images_per_s"]))
    print(f"{'workers':>7}  {'images':>6}  {'seconds':>7}  {'images/s':>8}")
    for workers, images, seconds, rate in rows:
        print(f"{workers:>7}  {images:>6}  {seconds:>7.1f}  {rate:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
