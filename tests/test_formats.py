"""NRRD, MetaImage and MGH/MGZ: the same voxels as a NIfTI file give the same slices.

``tests/data/formats`` holds one real volume (a crop of Colin27, stored S-L-P with a 10°
rotation) as NIfTI and MGZ/MGH written by nibabel, and as NRRD, NHDR + raw, MHA and
MHD + raw/zraw written by SimpleITK (``scripts/make_format_fixtures.py``): our readers
are checked against ITK's writer, not against themselves.
"""
from __future__ import annotations

import gzip
import shutil
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deepssim.config import IngestConfig
from deepssim.io import errors, ingest

FORMATS = Path(__file__).resolve().parent / "data" / "formats"
NIFTI = "colin.nii.gz"
# every file a user would point the gate at (detached data files are read through these)
VOLUMES = ["colin.nrrd", "colin_gz.nrrd", "colin.nhdr", "colin.mha", "colin_z.mha", "colin.mhd",
           "colin_z.mhd", "colin.mgz", "colin.mgh"]
S = 64


def _ingest(paths, tmp_path: Path, config: IngestConfig = IngestConfig()) -> pd.DataFrame:
    return ingest([Path(p) for p in paths], config, S, tmp_path / "work", root=tmp_path if
                  all(Path(p).is_relative_to(tmp_path) for p in paths) else None).manifest


def _by_slice(manifest: pd.DataFrame, name: str) -> pd.Series:
    rows = manifest[manifest["image_id"].str.startswith(name + "#")]
    return rows.set_index(rows["image_id"].str.split("#").str[1])["sha256"]


@pytest.fixture(scope="module")
def fixtures_manifest(tmp_path_factory) -> pd.DataFrame:
    files = [FORMATS / name for name in [NIFTI, *VOLUMES]]  # not the folder's README
    return ingest(files, IngestConfig(), S, tmp_path_factory.mktemp("formats")).manifest


def test_every_format_gives_the_nifti_slices(fixtures_manifest):
    m = fixtures_manifest
    assert (m["status"] == "ok").all(), m[m["status"] != "ok"][["image_id", "reason"]]
    reference = _by_slice(m, NIFTI)
    assert len(reference) >= 30
    for name in VOLUMES:
        ours = _by_slice(m, name)
        assert list(ours.index) == list(reference.index), name  # same z=index ids, same skipped slices
        assert (ours == reference).all(), f"{name}: pixel hashes differ from the NIfTI's"
    formats = m.assign(file=m["image_id"].str.split("#").str[0]).groupby("file")["format"].first()
    assert formats["colin.nhdr"] == "nrrd" and formats["colin_z.mhd"] == "metaimage"
    assert formats["colin.mgz"] == "mgh" and formats["colin.mgh"] == "mgh"


def test_detached_data_files_are_read_through_their_header_not_listed(fixtures_manifest):
    ids = set(fixtures_manifest["image_id"].str.split("#").str[0])
    assert not ids & {"colin.raw", "colin_z.zraw"}
    assert set(fixtures_manifest["spacing"]) == {"4x4"}


def test_the_canonical_frame_is_nibabels(fixtures_manifest):
    """The NIfTI's slices are those of nibabel's closest-canonical volume (z = axial)."""
    canonical = nib.as_closest_canonical(nib.load(FORMATS / NIFTI))
    assert nib.aff2axcodes(nib.load(FORMATS / NIFTI).affine) == ("S", "L", "P")
    assert np.asanyarray(canonical.dataobj).shape[2] == 42  # the stored first axis became z
    assert all(i.split("#")[1].startswith("z=") for i in fixtures_manifest["image_id"])


def test_a_header_audited_alone_finds_its_data_file(tmp_path):
    m = _ingest([FORMATS / "colin.mhd"], tmp_path)
    assert (m["status"] == "ok").all() and len(m) == len(_by_slice(m, "colin.mhd")) > 0


def _copy(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(FORMATS / name, folder / name)
    return folder


def _reason(manifest: pd.DataFrame, name: str) -> str:
    rows = manifest[manifest["image_id"] == name]
    assert len(rows) == 1 and rows["status"].iloc[0] == "quarantined", manifest[["image_id", "reason"]]
    return rows["reason"].iloc[0]


def test_detached_header_problems_are_quarantined_with_reasons(tmp_path):
    folder = _copy(tmp_path, "colin.mhd", "colin.nhdr", "colin_z.zraw")
    (folder / "lonely.raw").write_bytes(b"\x01" * 4096)
    text = (FORMATS / "colin.mhd").read_text()
    (folder / "escape.mhd").write_text(text.replace("colin.raw", "../outside.raw"))
    (tmp_path / "outside.raw").write_bytes((FORMATS / "colin.raw").read_bytes())
    (folder / "absolute.mhd").write_text(text.replace("colin.raw", str(FORMATS / "colin.raw")))
    (folder / "listed.mhd").write_text(text.replace("colin.raw", "LIST 2D"))
    m = ingest([folder], IngestConfig(), S, tmp_path / "w").manifest
    assert _reason(m, "colin.mhd") == errors.DETACHED_MISSING  # its colin.raw was not copied
    assert _reason(m, "colin.nhdr") == errors.DETACHED_MISSING
    assert _reason(m, "escape.mhd") == errors.DETACHED_OUTSIDE
    assert _reason(m, "absolute.mhd") == errors.DETACHED_OUTSIDE
    assert _reason(m, "listed.mhd") == errors.DETACHED_LAYOUT
    assert _reason(m, "lonely.raw") == errors.ORPHAN_DATA
    assert _reason(m, "colin_z.zraw") == errors.ORPHAN_DATA  # its header was not copied


def _with_header(src: str, old: str, new: str, dst: Path) -> Path:
    data = (FORMATS / src).read_bytes()
    assert old.encode() in data
    dst.write_bytes(data.replace(old.encode(), new.encode(), 1))
    return dst


def test_header_and_payload_damage_get_specific_reasons(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _with_header("colin.mha", "DimSize = 42 46 55", "DimSize = 42 46 56", folder / "short.mha")
    _with_header("colin.nrrd", "sizes: 42 46 55", "sizes: 42 46 56", folder / "short.nrrd")
    _with_header("colin.mha", "MET_SHORT", "MET_STRING", folder / "type.mha")
    _with_header("colin.nrrd", "type: short", "type: quaternion", folder / "type.nrrd")
    _with_header("colin.nrrd", "encoding: raw", "encoding: hex", folder / "hex.nrrd")
    _with_header("colin.mha", "DimSize = 42 46 55", "DimSize = 30000 30000 30000", folder / "huge.mha")
    _with_header("colin.nrrd", "sizes: 42 46 55", "sizes: 30000 30000 30000", folder / "huge.nrrd")
    _with_header("colin.mha", "NDims = 3", "NDims = 7", folder / "ndims.mha")
    gz = (FORMATS / "colin_gz.nrrd").read_bytes()
    (folder / "cut.nrrd").write_bytes(gz[: len(gz) - 20_000])
    z = bytearray((FORMATS / "colin_z.mha").read_bytes())
    z[-30_000:-29_000] = bytes(1000)
    (folder / "zbad.mha").write_bytes(bytes(z))
    tracemalloc.start()
    m = ingest([folder], IngestConfig(), S, tmp_path / "w").manifest
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert _reason(m, "short.mha") == errors.TRUNCATED
    assert _reason(m, "short.nrrd") == errors.TRUNCATED
    assert _reason(m, "type.mha") == "invalid MetaImage header: unsupported ElementType"
    assert _reason(m, "type.nrrd").startswith("invalid NRRD header")
    assert _reason(m, "hex.nrrd") == errors.UNSUPPORTED_ENCODING.format(encoding="NRRD")
    assert _reason(m, "huge.mha").startswith("image too large: 27000000000000 pixels")
    assert _reason(m, "huge.nrrd").startswith("image too large: 27000000000000 pixels")
    assert _reason(m, "ndims.mha") == "invalid MetaImage header: NDims/DimSize"
    assert _reason(m, "cut.nrrd") == errors.TRUNCATED_COMPRESSED
    assert _reason(m, "zbad.mha") in (errors.CORRUPT_COMPRESSED, errors.TRUNCATED_COMPRESSED)
    assert peak < 64 * 1024**2  # nothing a header claims was allocated


def test_a_compressed_block_is_inflated_only_as_far_as_the_header_says(tmp_path):
    """A small header over a large zlib stream (a "zip bomb") is read to its claimed size."""
    from deepssim.io.payload import Payload, read_payload

    bomb = tmp_path / "bomb.zraw"
    bomb.write_bytes(zlib.compress(bytes(400 * 1024**2), 9))  # 400 MB of zeros in ~400 kB
    tracemalloc.start()
    values = read_payload(Payload(bomb, np.dtype("<i2"), 1000, 0, "gzip"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert values.shape == (1000,) and peak < 32 * 1024**2


def _nrrd(path: Path, volume: np.ndarray, space: str, directions: list[str], extra: str = "",
          encoding: str = "raw", endian: str = "little") -> Path:
    dtype = volume.dtype.newbyteorder(">" if endian == "big" else "<")
    body = np.asarray(volume, dtype).tobytes(order="F")
    if encoding == "gzip":
        body = gzip.compress(body)
    sizes = " ".join(map(str, volume.shape))
    header = (f"NRRD0005\ntype: int16\ndimension: {volume.ndim}\nspace: {space}\nsizes: {sizes}\n"
              f"space directions: {' '.join(directions)}\nendian: {endian}\nencoding: {encoding}\n"
              f"space origin: (0,0,0)\n" + (extra + "\n" if extra else "") + "\n")
    path.write_bytes(header.encode() + body)
    return path


@pytest.fixture(scope="module")
def canonical() -> np.ndarray:
    return np.asanyarray(nib.as_closest_canonical(nib.load(FORMATS / NIFTI)).dataobj)


def test_hand_written_nrrd_spaces_time_axis_and_big_endian(tmp_path, canonical):
    """RAS voxels written as LPS with flipped axes, as RAS big-endian gzip, and as a 4D
    RAS-time series: all give the NIfTI's slices (the 4D one with ``volume_index``)."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(FORMATS / NIFTI, folder / NIFTI)
    # LPS world: voxel x steps -4 mm along L (i.e. +R), so store x reversed with +L steps
    _nrrd(folder / "lps.nrrd", canonical[::-1, ::-1], "left-posterior-superior",
          ["(4,0,0)", "(0,4,0)", "(0,0,4)"])
    _nrrd(folder / "ras_be.nrrd", canonical, "RAS", ["(4,0,0)", "(0,4,0)", "(0,0,4)"], encoding="gzip",
          endian="big")
    series = np.stack([canonical, canonical[::-1]], axis=3)  # volume 1 is a mirror image
    _nrrd(folder / "time.nrrd", series, "right-anterior-superior-time",
          ["(4,0,0,0)", "(0,4,0,0)", "(0,0,4,0)", "(0,0,0,2)"], extra="kinds: domain domain domain time")
    m = ingest([folder], IngestConfig(volume_index=0), S, tmp_path / "w").manifest
    reference = _by_slice(m, NIFTI)
    for name in ("lps.nrrd", "ras_be.nrrd", "time.nrrd"):
        assert (_by_slice(m, name) == reference).all(), name
    m1 = ingest([folder / "time.nrrd"], IngestConfig(volume_index=1), S, tmp_path / "w1").manifest
    assert not (_by_slice(m1, "time.nrrd") == reference.reindex(_by_slice(m1, "time.nrrd").index)).any()
    m4 = ingest([folder / "time.nrrd"], IngestConfig(), S, tmp_path / "w4").manifest
    assert list(m4["reason"]) == [errors.NEED_VOLUME_INDEX]


def test_big_endian_metaimage_and_synonym_keys(tmp_path, canonical):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(FORMATS / NIFTI, folder / NIFTI)
    # MetaImage world is LPS: axis 0 steps along -x (towards R) and axis 1 along -y (A)
    header = ("ObjectType = Image\nNDims = 3\nElementByteOrderMSB = True\n"
              "Orientation = -1 0 0 0 -1 0 0 0 1\nPosition = 0 0 0\nElementSize = 4 4 4\n"
              f"DimSize = {' '.join(map(str, canonical.shape))}\nElementType = MET_SHORT\n"
              "ElementDataFile = LOCAL\n")
    (folder / "be.mha").write_bytes(header.encode() + np.asarray(canonical, ">i2").tobytes(order="F"))
    m = ingest([folder], IngestConfig(), S, tmp_path / "w").manifest
    assert (_by_slice(m, "be.mha") == _by_slice(m, NIFTI)).all()


def test_ct_like_volumes_get_the_ct_window_in_every_format(tmp_path):
    """HU in an NRRD are windowed like HU in a NIfTI (the fixed CT window)."""
    rng = np.random.default_rng(0)
    hu = np.full((24, 24, 4), -1000, np.int16)
    hu[4:20, 4:20] = rng.integers(-200, 900, size=(16, 16, 4))
    folder = tmp_path / "in"
    folder.mkdir()
    nib.save(nib.Nifti1Image(hu, np.eye(4)), folder / "ct.nii")
    _nrrd(folder / "ct.nrrd", hu, "RAS", ["(1,0,0)", "(0,1,0)", "(0,0,1)"])
    result = ingest([folder], IngestConfig(), 32, tmp_path / "w")
    m = result.manifest.set_index("image_id")
    pixels = result.pixels()
    for k in range(4):
        a, b = pixels[m.loc[f"ct.nii#z={k}", "row"]], pixels[m.loc[f"ct.nrrd#z={k}", "row"]]
        np.testing.assert_array_equal(a, b)
    assert m.loc["ct.nrrd#z=0", "intensity_min"] == -1000


@pytest.mark.slow
def test_registering_the_nifti_and_auditing_other_formats_finds_duplicates(tmp_path):
    """The gate end to end: the NIfTI registered as the cohort, detached NRRD, compressed
    MetaImage and MGZ copies of the same voxels audited: every slice is a duplicate."""
    from flows.audit import audit
    from flows.register_cohort import register_cohort

    train, release = tmp_path / "train", tmp_path / "release"
    train.mkdir()
    shutil.copy(FORMATS / NIFTI, train / NIFTI)
    release.mkdir()
    for name in ("colin.nhdr", "colin.raw", "colin_z.mhd", "colin_z.zraw", "colin.mgz"):
        shutil.copy(FORMATS / name, release / name)
    db = str(tmp_path / "gate.duckdb")
    register_cohort(name="formats", paths=[str(train)], db=db)
    state = audit(candidates=[str(release)], cohort="formats", out_dir=str(tmp_path / "out"), db=db,
                  return_state=True)
    assert state.is_failed()  # copies of training slices: the gate says no
    verdicts = pd.read_csv(tmp_path / "out" / "verdicts.csv")
    verdicts["file"] = verdicts["image_id"].str.split("#").str[0]
    assert set(verdicts["file"]) == {"colin.nhdr", "colin_z.mhd", "colin.mgz"}
    duplicate_rate = verdicts.groupby("file")["label"].apply(lambda s: (s == "duplicate").mean())
    assert (duplicate_rate >= 0.9).all(), duplicate_rate
    same_slice = verdicts["nearest_id"].str.split("#").str[1] == verdicts["image_id"].str.split("#").str[1]
    assert same_slice.mean() >= 0.9
