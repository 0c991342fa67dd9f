#!/usr/bin/env python3
"""Write the MobileNet-class benchmark model (not committed; a few MB).

``[1, 224, 224, 3]`` uint8 in, full-int8 MobileNet-v1-shaped body with
deterministic random weights, ``[1, 1000]`` uint8 out; see
:func:`edged.testing.tflite_build.mobilenet_class_model`.  Same seed, same bytes
(4.27 MB; seed 0 → sha256 853108f0…).  Measured on a 2-core x86 VM, one thread:
≈5 ms per invoke with LiteRT 2.3 (XNNPACK int8), ≈88 ms with tflite-runtime 2.14.

Usage::

    python scripts/make_bench_model.py [PATH] [--seed N] [--alpha A] [--size S]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from edged.repository.manifest import file_entry  # noqa: E402
from edged.testing.tflite_build import mobilenet_class_model  # noqa: E402

DEFAULT_PATH = ROOT / "build" / "bench" / "mobilenet_class_int8.tflite"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="write the MobileNet-class int8 benchmark model")
    p.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=1.0, help="width multiplier (1.0 = MobileNet v1 widths)")
    p.add_argument("--size", type=int, default=224, help="input height and width")
    args = p.parse_args(argv)
    data = mobilenet_class_model(seed=args.seed, alpha=args.alpha, input_size=args.size)
    args.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.path.with_name(f".{args.path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(args.path)  # never leave a half-written model where a benchmark may pick it up
    entry = file_entry(args.path)
    print(f"wrote {args.path} ({entry['size']} bytes, sha256 {entry['sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
