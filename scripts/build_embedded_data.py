"""Rebuild ``pyro_clip/data/_embedded/fashion_mnist_subset.npz`` from the Fashion-MNIST idx files.

The subset is class-balanced: 100 images per class drawn (seeded, without replacement) from the
official training set and 100 per class from the official test set, 28x28 uint8, white garment
on black as in the original files. Within each array the images keep the order of the official
files (ascending source index), so "the first 80 per class" of the training pool is well
defined. ``source_index`` records where every image came from.

The archive is written byte-for-byte reproducibly (fixed zip timestamps, fixed member order),
so ``--check`` can confirm that the shipped file is exactly what this script produces::

    python scripts/build_embedded_data.py            # rebuild
    python scripts/build_embedded_data.py --check    # verify the shipped file

Fashion-MNIST is (c) 2017 Zalando SE, MIT licence; the notice ships beside the archive.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).resolve().parents[1] / "pyro_clip" / "data" / "_embedded"
OUT_FILE = OUT / "fashion_mnist_subset.npz"
COPYRIGHT = Path("/usr/share/doc/dataset-fashion-mnist/copyright")
LICENSE_FILE = OUT / "LICENSE-fashion-mnist.txt"

SEED = 20240601
PER_CLASS = 100
NUM_CLASSES = 10
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) idx file: big-endian header, magic ``0x0000 <dtype=0x08> <ndim>``."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(shape)


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices per class (classes in ascending order), returned sorted."""
    picks = []
    for c in range(NUM_CLASSES):
        pool = np.flatnonzero(labels == c)
        picks.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def build_arrays(idx_dir: Path = IDX_DIR, seed: int = SEED) -> dict[str, np.ndarray]:
    """Draw the subset; returns the arrays stored in the archive."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(idx_dir / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(idx_dir / f"{prefix}-labels-idx1-ubyte.gz")
        picked = balanced_subset(labels, PER_CLASS, rng)
        arrays[f"{split}_images"] = np.ascontiguousarray(images[picked])
        arrays[f"{split}_labels"] = labels[picked].astype(np.int64)
        arrays[f"{split}_source_index"] = picked.astype(np.int64)
    return arrays


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A deflate-compressed ``.npz`` with fixed timestamps, readable by ``np.load``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, arrays[key], allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=9)
    return buf.getvalue()


def license_text() -> str:
    """The Fashion-MNIST MIT notice, taken from the Debian package's copyright file."""
    text = COPYRIGHT.read_text()
    return (
        "The images in fashion_mnist_subset.npz are a subset of Fashion-MNIST\n"
        "(https://github.com/zalandoresearch/fashion-mnist), redistributed under the MIT\n"
        "(Expat) licence below. Source: the Debian package dataset-fashion-mnist, whose\n"
        "copyright file is reproduced verbatim:\n\n" + text
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify instead of writing")
    args = parser.parse_args(argv)
    data = npz_bytes(build_arrays())
    digest = hashlib.sha256(data).hexdigest()
    if args.check:
        ok = OUT_FILE.exists() and OUT_FILE.read_bytes() == data
        print(f"{OUT_FILE}: {'matches' if ok else 'DIFFERS from'} a fresh build ({digest})")
        return 0 if ok else 1
    OUT.mkdir(parents=True, exist_ok=True)
    OUT_FILE.write_bytes(data)
    LICENSE_FILE.write_text(license_text())
    print(f"wrote {OUT_FILE} ({len(data)} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
