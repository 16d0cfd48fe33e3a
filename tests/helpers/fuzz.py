"""Seeded fuzzing of the ingestion: damage real files of every format, ingest each one alone.

Used by ``tests/test_fuzz.py`` (a few hundred mutations in CI) and by
``benchmarks/fuzz_ingest.py`` (thousands, with figures).  A mutation is one of: flipped
bits, truncation, overwritten header bytes, spliced random bytes, or a header number
replaced by a huge one (text headers).  For a detached pair (.nhdr/.mhd + data file)
either file may be damaged.  Each outcome records whether every file came back as
audited slices or as a quarantine row ("lost" otherwise), whether an exception escaped
the readers (an ``unexpected read error`` reason, or an exception out of ``ingest``),
the seconds and the peak traced memory.
"""
from __future__ import annotations

import re
import shutil
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FORMATS = REPO / "tests" / "data" / "formats"
SAMPLE_PNG = REPO / "deepssim" / "sample_data" / "train" / "nibabel_anatomical" / "nibabel_anatomical_v0_s010.png"
MUTATIONS = ("bitflip", "truncate", "header", "splice", "number")


@dataclass
class Outcome:
    """What ingesting one mutated file did."""

    seed_name: str
    mutation: str
    target: str
    ok_slices: int
    quarantined: int
    reasons: tuple[str, ...]
    lost: bool
    escaped: str | None
    seconds: float
    peak_bytes: int


def seed_files(folder: Path) -> list[list[Path]]:
    """Real files of every supported format, each a list (header first, then data file)."""
    import pydicom.data
    import tifffile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    gray = np.asarray(Image.open(SAMPLE_PNG).convert("L"))
    shutil.copy(SAMPLE_PNG, folder / "slice.png")
    Image.fromarray(gray).save(folder / "slice.jpg", quality=90)
    tifffile.imwrite(folder / "slice.tif", gray.astype(np.uint16) * 200)
    np.save(folder / "slice.npy", gray.astype(np.float32))
    np.savez(folder / "pack.npz", a=gray, b=gray[::-1])
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    singles = ["colin.nii.gz", "colin.nrrd", "colin_gz.nrrd", "colin.mha", "colin_z.mha", "colin.mgz", "colin.mgh"]
    for name in singles + ["colin.nhdr", "colin.raw", "colin.mhd", "colin_z.mhd", "colin_z.zraw"]:
        shutil.copy(FORMATS / name, folder / name)
    seeds = [[folder / n] for n in ["slice.png", "slice.jpg", "slice.tif", "slice.npy", "pack.npz", "ct.dcm", *singles]]
    seeds += [[folder / "colin.nhdr", folder / "colin.raw"], [folder / "colin.mhd", folder / "colin.raw"],
              [folder / "colin_z.mhd", folder / "colin_z.zraw"]]
    return seeds


def _number(data: bytearray, rng: np.random.Generator) -> bytes:
    """Replace one decimal number in the first 2 kB by a huge, negative or zero value."""
    head = bytes(data[:2048])
    numbers = list(re.finditer(rb"\d+", head))
    if not numbers:
        return bytes(data)
    m = numbers[int(rng.integers(len(numbers)))]
    new = rng.choice([b"30000", b"2147483647", b"-1", b"0", b"99999999999999999999", b"1e308", b"nan"])
    return head[:m.start()] + new + head[m.end():] + bytes(data[2048:])


def mutate(data: bytes, mutation: str, rng: np.random.Generator) -> bytes:
    """One seeded mutation of ``data``."""
    buf = bytearray(data)
    n = len(buf)
    if mutation == "bitflip":
        for _ in range(int(rng.integers(1, 17))):
            pos = int(rng.integers(n))
            buf[pos] ^= 1 << int(rng.integers(8))
        return bytes(buf)
    if mutation == "truncate":
        return bytes(buf[: int(rng.integers(0, n))])
    if mutation == "header":
        start = int(rng.integers(0, min(n, 512)))
        length = int(rng.integers(1, 33))
        buf[start:start + length] = rng.bytes(length)[: max(0, n - start)]
        return bytes(buf)
    if mutation == "splice":
        pos = int(rng.integers(0, n))
        return bytes(buf[:pos]) + rng.bytes(int(rng.integers(1, 4097))) + bytes(buf[pos:])
    return _number(buf, rng)


def _accounted(manifest, rel: str) -> bool:
    ids = manifest["image_id"].astype(str)
    return bool(((ids == rel) | ids.str.startswith(rel + "#") | ids.str.startswith(rel + "/")).any())


def run_one(files: list[Path], mutation: str, rng: np.random.Generator, work: Path) -> Outcome:
    """Copy ``files`` into a fresh folder, damage one of them, ingest the folder."""
    from deepssim.config import IngestConfig
    from deepssim.io import errors, ingest

    if work.exists():
        shutil.rmtree(work)
    inputs = work / "in"
    inputs.mkdir(parents=True)
    target = files[int(rng.integers(len(files)))]
    for f in files:
        data = f.read_bytes()
        (inputs / f.name).write_bytes(mutate(data, mutation, rng) if f == target else data)
    escaped = None
    tracemalloc.start()
    start = time.perf_counter()
    try:
        manifest = ingest([inputs], IngestConfig(), 64, work / "out").manifest
    except Exception as exc:  # noqa: BLE001 - an escape is what we are counting
        manifest, escaped = None, f"{type(exc).__name__} out of ingest"
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    if manifest is None:
        return Outcome(files[0].name, mutation, target.name, 0, 0, (), True, escaped, seconds, peak)
    reasons = tuple(sorted(set(manifest["reason"].dropna().astype(str))))
    unexpected = [r for r in reasons if r.startswith(errors.UNEXPECTED.split("(")[0])]
    headers_kept = _accounted(manifest, files[0].name)
    data_kept = all(_accounted(manifest, f.name) or headers_kept for f in files[1:])
    return Outcome(files[0].name, mutation, target.name, int((manifest["status"] == "ok").sum()),
                   int((manifest["status"] == "quarantined").sum()), reasons,
                   not (headers_kept and data_kept), unexpected[0] if unexpected else escaped, seconds, peak)


def campaign(n: int, seed: int, work: Path) -> list[Outcome]:
    """``n`` seeded mutations spread over every seed file and mutation kind."""
    rng = np.random.default_rng(seed)
    seeds = seed_files(work / "seeds")
    outcomes = []
    for i in range(n):
        files = seeds[i % len(seeds)]
        mutation = MUTATIONS[(i // len(seeds)) % len(MUTATIONS)]
        outcomes.append(run_one(files, mutation, rng, work / "case"))
    return outcomes
