"""Ingestion on real data: the shared NIfTI volumes and PNG slices, DICOM series written
from real slices, pydicom's own test files, and a corpus of broken inputs."""
from __future__ import annotations

import builtins
import logging
import os
import random
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from deepssim.config import IngestConfig
from deepssim.io import MANIFEST_COLUMNS, ingest
from deepssim.io.ingest import model_input
from deepssim.io.slicing import FOREGROUND_LEVEL, raw_sha256
from deepssim.preprocess import window_to_unit
from deepssim.audit.validate import write_quarantine_csv

from realdata import SHARED_DATA as DATA

VOLUMES = DATA / "volumes"
COLIN_PNG = DATA / "slices" / "brain_mri" / "colin27"
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
S = 64
PLANTED_NAME = "Zyxwvut^Plantedname"
PLANTED_ID = "PID-PLANTED-884193"
CT_WINDOW = IngestConfig().ct_window

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="shared real data not present")


# ---------------------------------------------------------------- helpers / fixtures


def real_slices(n: int, start: int = 60, step: int = 7) -> list[np.ndarray]:
    """n real colin27 PNG slices (128×128 uint8), far enough apart to be told apart."""
    files = sorted(COLIN_PNG.glob("*.png"))[start:start + n * step:step]
    return [np.array(Image.open(f)) for f in files]


def to_hu(png: np.ndarray) -> np.ndarray:
    """Map an 8-bit slice to a CT-like HU range (-1000 .. 1000)."""
    return png.astype(np.float32) / 255.0 * 2000.0 - 1000.0


def _ct_dataset(rows: int, cols: int, series_uid: str, modality: str = "CT",
                photometric: str = "MONOCHROME2"):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = PLANTED_NAME, PLANTED_ID
    ds.PatientBirthDate, ds.StudyDate = "19610203", "20240101"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid
    ds.Modality = modality
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [0.8, 0.7]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = 2.5
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    return ds


def _stored(hu: np.ndarray) -> np.ndarray:
    return np.round((hu + 1024.0) / 2.0).astype(np.uint16)


def write_ct_series(folder: Path, slices: list[np.ndarray], seed: int, series_uid: str) -> list[Path]:
    """A CT series (slope 2, intercept -1024, 2.5 mm apart) with shuffled file names and
    misleading InstanceNumbers: only ImagePositionPatient gives the true order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    order = list(range(len(slices)))
    rng.shuffle(order)
    paths = []
    for k in order:
        ds = _ct_dataset(*slices[k].shape, series_uid)
        ds.ImagePositionPatient = [-50.0, -60.0, 10.0 + 2.5 * k]
        ds.InstanceNumber = len(slices) - k if seed % 2 else rng.randint(1, 999)
        ds.PixelData = _stored(to_hu(slices[k])).tobytes()
        path = folder / f"IM{rng.randrange(16**6):06x}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def expected_ct_input(png: np.ndarray) -> np.ndarray:
    """What ingestion must produce for a CT DICOM slice of ``png``: HU, CT window, and the
    canonical-RAS display layout, which mirrors DICOM's stored columns (L/R)."""
    hu = (_stored(to_hu(png)).astype(np.float32) * 2.0) - 1024.0
    return model_input(window_to_unit(np.fliplr(hu), CT_WINDOW), S)


@pytest.fixture(scope="module")
def colin_result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("colin")
    return ingest([VOLUMES / "colin27_t1.nii.gz"], IngestConfig(), S, tmp)


# ---------------------------------------------------------------- NIfTI volumes


def test_nifti_volume_ids_order_and_empty_slices_skipped(colin_result):
    m = colin_result.manifest
    assert list(m.columns) == MANIFEST_COLUMNS
    assert (m["status"] == "ok").all()
    img = nib.as_closest_canonical(nib.load(VOLUMES / "colin27_t1.nii.gz"))
    vol = np.asanyarray(img.dataobj).astype(np.float32)
    lo, hi = np.percentile(vol, IngestConfig().percentile_window)
    fg = (np.clip((vol - lo) / (hi - lo), 0, 1) > FOREGROUND_LEVEL).mean(axis=(0, 1))
    expected = [z for z in range(vol.shape[2]) if fg[z] >= IngestConfig().foreground_threshold]
    assert 0 < len(expected) < vol.shape[2], "the volume has empty slices to skip"
    assert list(m["image_id"]) == [f"colin27_t1.nii.gz#z={z}" for z in expected]
    assert list(m["slice_index"]) == expected and set(m["slice_axis"]) == {"z"}
    assert set(m["volume_id"]) == {"colin27_t1.nii.gz"}
    assert list(m["row"]) == list(range(len(m)))
    assert set(m["orig_shape"]) == {"217x181"} and set(m["spacing"]) == {"1x1"}
    pixels = colin_result.pixels()
    assert pixels.shape == (len(m), S, S) and pixels.dtype == np.float16
    assert 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0
    z = 90
    raw = np.flipud(vol[:, :, z].T).astype(np.uint8)
    row = m.set_index("image_id").loc[f"colin27_t1.nii.gz#z={z}"]
    assert row["sha256"] == raw_sha256(raw)


def test_nifti_slices_match_the_shared_png_slices(colin_result):
    """Same orientation and windowing as the slices the data set was cut with."""
    m = colin_result.manifest.set_index("image_id")
    pixels = colin_result.pixels()
    png = np.array(Image.open(COLIN_PNG / "colin27_t1_v0_s090.png"), dtype=np.float32) / 255
    ours = pixels[m.loc["colin27_t1.nii.gz#z=90", "row"]].astype(np.float32)
    png_small = model_input(png, S)
    assert np.corrcoef(ours.ravel(), png_small.ravel())[0, 1] > 0.99
    assert np.abs(ours - png_small).mean() < 0.05


def test_slice_axis_and_4d_volume_index(tmp_path):
    vol = np.asanyarray(nib.load(VOLUMES / "colin27_t1.nii.gz").dataobj)[::4, ::4, ::4].astype(np.int16)
    four = np.stack([vol, vol[::-1]], axis=-1)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(four, np.diag([4.0, 4, 4, 1])), tmp_path / "in" / "fourd.nii.gz")
    m = ingest([tmp_path / "in"], IngestConfig(slice_axis=0, volume_index=1), S, tmp_path / "w").manifest
    assert (m["status"] == "ok").all() and len(m) > 5
    assert all(i.startswith("fourd.nii.gz#x=") for i in m["image_id"])
    assert set(m["orig_shape"]) == {f"{vol.shape[2]}x{vol.shape[1]}"}
    m = ingest([tmp_path / "in"], IngestConfig(volume_index=5), S, tmp_path / "w2").manifest
    assert list(m["reason"]) == ["4D volume: volume index 5 out of range (0..1)"]


def test_ct_like_nifti_uses_the_fixed_hu_window(tmp_path):
    hu = np.stack([to_hu(s) for s in real_slices(4)], axis=-1)  # (128, 128, 4) in HU
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(hu.astype(np.float32), np.eye(4)), tmp_path / "in" / "ct.nii")
    res = ingest([tmp_path / "in"], IngestConfig(), S, tmp_path / "w")
    m = res.manifest
    assert list(m["image_id"]) == [f"ct.nii#z={k}" for k in range(4)]
    expected = model_input(window_to_unit(np.flipud(hu[:, :, 2].T), CT_WINDOW), S)
    np.testing.assert_allclose(res.pixels()[2].astype(np.float32), expected, atol=2e-3)


# ---------------------------------------------------------------- DICOM


def test_dicom_ct_series_rescale_order_and_ids(tmp_path):
    from pydicom.uid import generate_uid

    slices = real_slices(5)
    files = write_ct_series(tmp_path / "root" / "patient" / "ct", slices, seed=1, series_uid=generate_uid())
    res = ingest([tmp_path / "root"], IngestConfig(), S, tmp_path / "w")
    m = res.manifest
    assert (m["status"] == "ok").all(), m[["image_id", "reason"]]
    base = m["volume_id"].iloc[0]
    assert base.startswith("patient/ct/series-") and len(base.rsplit("-", 1)[1]) == 8
    assert list(m["image_id"]) == [f"{base}#z={k}" for k in range(5)]
    assert set(m["format"]) == {"dicom"} and set(m["spacing"]) == {"0.8x0.7"}
    pixels = res.pixels().astype(np.float32)
    for k, png in enumerate(slices):
        np.testing.assert_allclose(pixels[k], expected_ct_input(png), atol=2e-3)
    assert m["intensity_min"].min() >= -1024 and m["intensity_max"].max() <= 1000
    for k, src in enumerate(m["source_path"]):  # each slice row points at the file holding it
        assert float(pydicom.dcmread(src).ImagePositionPatient[2]) == pytest.approx(10.0 + 2.5 * k)
    assert set(m["source_path"]) == {str(p) for p in files}


def test_shuffled_files_give_identical_order_ids_and_hashes(tmp_path):
    from pydicom.uid import generate_uid

    slices, uid = real_slices(6, start=40, step=5), generate_uid()
    write_ct_series(tmp_path / "a" / "series", slices, seed=3, series_uid=uid)
    write_ct_series(tmp_path / "b" / "series", slices, seed=8, series_uid=uid)
    ra = ingest([tmp_path / "a"], IngestConfig(), S, tmp_path / "wa")
    files_b = sorted((tmp_path / "b" / "series").iterdir())
    random.Random(0).shuffle(files_b)
    rb = ingest(files_b, IngestConfig(), S, tmp_path / "wb", root=tmp_path / "b")
    cols = ["image_id", "sha256", "slice_index", "intensity_min", "intensity_max"]
    pd.testing.assert_frame_equal(ra.manifest[cols], rb.manifest[cols])
    np.testing.assert_array_equal(ra.pixels(), rb.pixels())


def test_dicom_monochrome1_is_inverted(tmp_path):
    from pydicom.uid import generate_uid

    png = real_slices(1)[0]
    for name, photometric, values in (("m2.dcm", "MONOCHROME2", png), ("m1.dcm", "MONOCHROME1", 255 - png)):
        ds = _ct_dataset(*png.shape, generate_uid(), modality="MR", photometric=photometric)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.PixelData = values.astype(np.uint16).tobytes()
        (tmp_path / "in").mkdir(exist_ok=True)
        ds.save_as(tmp_path / "in" / name, enforce_file_format=True)
    res = ingest([tmp_path / "in"], IngestConfig(), S, tmp_path / "w")
    m = res.manifest.set_index("image_id")
    assert (m["status"] == "ok").all()
    p = res.pixels().astype(np.float32)
    np.testing.assert_allclose(p[m.loc["m1.dcm", "row"]], p[m.loc["m2.dcm", "row"]], atol=2e-3)


def test_dicom_multiframe_orders_frames_by_position(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    slices = real_slices(4, start=50, step=9)
    order = [2, 0, 3, 1]  # frames stored out of anatomical order
    ds = _ct_dataset(*slices[0].shape, generate_uid())
    ds.NumberOfFrames = len(order)
    frames = []
    for k in order:
        pos = Dataset()
        pos.ImagePositionPatient = [-50.0, -60.0, 10.0 + 2.5 * k]
        group = Dataset()
        group.PlanePositionSequence = [pos]
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.stack([_stored(to_hu(slices[k])) for k in order]).tobytes()
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "multi.dcm", enforce_file_format=True)
    res = ingest([tmp_path / "in"], IngestConfig(), S, tmp_path / "w")
    m = res.manifest
    assert list(m["image_id"]) == [f"multi.dcm#z={k}" for k in range(4)]
    for k, png in enumerate(slices):
        np.testing.assert_allclose(res.pixels()[k].astype(np.float32), expected_ct_input(png), atol=2e-3)


def test_pydicom_real_files(tmp_path):
    """Real files pydicom ships; the two MR files share a series UID, so they sit in
    separate folders to stay separate images."""
    names = {"CT_small.dcm": "CT_small.dcm", "MR_small.dcm": "MR_small.dcm",
             "be/MR_small_bigendian.dcm": "MR_small_bigendian.dcm", "rtplan.dcm": "rtplan.dcm",
             "bad/MR_truncated.dcm": "MR_truncated.dcm"}
    for rel, n in names.items():
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PYDICOM_FILES / n, tmp_path / "in" / rel)
    m = ingest([tmp_path / "in"], IngestConfig(), S, tmp_path / "w").manifest.set_index("image_id")
    assert m.loc["rtplan.dcm", "reason"] == "DICOM without pixel data"
    assert m.loc["bad/MR_truncated.dcm", "status"] == "quarantined"
    for rel in ("CT_small.dcm", "MR_small.dcm", "be/MR_small_bigendian.dcm"):
        assert m.loc[rel, "status"] == "ok" and m.loc[rel, "orig_shape"] in ("128x128", "64x64")
    assert m.loc["CT_small.dcm", "intensity_min"] < -500  # rescaled to HU
    # same pixels in either byte order -> same content hash
    assert m.loc["MR_small.dcm", "sha256"] == m.loc["be/MR_small_bigendian.dcm", "sha256"]


def _transcode(src: Path, out: Path, syntax) -> None:
    """Re-encode a DICOM file's pixel data with GDCM (the decoder the product ships)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(out))
    assert writer.Write()


def test_compressed_dicom_reads_as_the_uncompressed_file(tmp_path):
    """PACS exports are often JPEG-lossless / JPEG-LS / JPEG 2000 / RLE encoded: each
    losslessly re-encoded copy of a real CT must give the same pixels, hash and model input
    as the original; a 12-bit lossy JPEG no installed decoder handles is quarantined with
    its transfer syntax named."""
    import gdcm

    syntaxes = {"jpeg_lossless": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
                "jpeg_ls": gdcm.TransferSyntax.JPEGLSLossless,
                "jpeg2000": gdcm.TransferSyntax.JPEG2000Lossless, "rle": gdcm.TransferSyntax.RLELossless}
    (tmp_path / "in" / "plain").mkdir(parents=True)
    shutil.copy(PYDICOM_FILES / "CT_small.dcm", tmp_path / "in" / "plain" / "ct.dcm")
    for name, syntax in syntaxes.items():  # one folder each: they share the original's series UID
        (tmp_path / "in" / name).mkdir()
        _transcode(PYDICOM_FILES / "CT_small.dcm", tmp_path / "in" / name / "ct.dcm", syntax)
        assert pydicom.dcmread(tmp_path / "in" / name / "ct.dcm").file_meta.TransferSyntaxUID.is_compressed
    (tmp_path / "in" / "lossy12").mkdir()
    shutil.copy(PYDICOM_FILES / "JPEG-lossy.dcm", tmp_path / "in" / "lossy12" / "ct.dcm")
    res = ingest([tmp_path / "in"], IngestConfig(), S, tmp_path / "w")
    m = res.manifest.set_index("image_id")
    plain = m.loc["plain/ct.dcm"]
    for name in syntaxes:
        row = m.loc[f"{name}/ct.dcm"]
        assert row["status"] == "ok", (name, row["reason"])
        assert row["sha256"] == plain["sha256"], name
        np.testing.assert_array_equal(res.pixels()[row["row"]], res.pixels()[plain["row"]])
    lossy = m.loc["lossy12/ct.dcm"]
    assert lossy["status"] == "quarantined"
    assert lossy["reason"] == "DICOM pixel data cannot be decoded (JPEG Extended (Process 2 and 4))"


# ---------------------------------------------------------------- 2D files and arrays


def test_png_copies_and_16_bit_versions_give_identical_inputs(tmp_path):
    src = COLIN_PNG / "colin27_t1_v0_s100.png"
    (tmp_path / "in" / "sub").mkdir(parents=True)
    shutil.copy(src, tmp_path / "in" / "a.png")
    shutil.copy(src, tmp_path / "in" / "sub" / "copy.png")
    a = np.array(Image.open(src))
    Image.fromarray(a.astype(np.uint16) * 257).save(tmp_path / "in" / "wide16.png")
    Image.fromarray(np.stack([a] * 3, axis=-1)).save(tmp_path / "in" / "rgb.png")
    Image.fromarray(a).save(tmp_path / "in" / "as.tiff")
    res = ingest([tmp_path / "in"], IngestConfig(), S, tmp_path / "w")
    m = res.manifest.set_index("image_id")
    assert (m["status"] == "ok").all() and len(m) == 5
    assert m.loc["a.png", "sha256"] == m.loc["sub/copy.png", "sha256"] == m.loc["as.tiff", "sha256"]
    assert m.loc["wide16.png", "dtype"] == "uint16"
    p = res.pixels()
    ref = p[m.loc["a.png", "row"]]
    for other in ("sub/copy.png", "as.tiff"):
        np.testing.assert_array_equal(p[m.loc[other, "row"]], ref)
    for other in ("wide16.png", "rgb.png"):
        np.testing.assert_allclose(p[m.loc[other, "row"]].astype(np.float32), ref.astype(np.float32), atol=2e-3)


def test_npy_and_npz(tmp_path):
    stack = np.stack(real_slices(3), axis=-1).astype(np.float32)  # (128, 128, 3)
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "img.npy", stack[:, :, 0])
    np.save(tmp_path / "in" / "vol.npy", stack)
    np.savez(tmp_path / "in" / "pack.npz", image=stack[:, :, 1], volume=stack, line=np.arange(40.0))
    res = ingest([tmp_path / "in"], IngestConfig(), S, tmp_path / "w")
    m = res.manifest.set_index("image_id")
    ok = sorted(m.index[m["status"] == "ok"])
    assert ok == sorted(["img.npy", "pack.npz/image"] + [f"vol.npy#z={k}" for k in range(3)]
                        + [f"pack.npz/volume#z={k}" for k in range(3)])
    assert m.loc["pack.npz/line", "reason"] == "unsupported array dimensions: 40"
    assert m.loc["img.npy", "sha256"] == m.loc["vol.npy#z=0", "sha256"]  # no reorientation of arrays
    assert m.loc["vol.npy#z=1", "volume_id"] == "vol.npy"


# ---------------------------------------------------------------- quarantine corpus


def _corrupt_corpus(folder: Path, outside: Path) -> dict[str, str]:
    """Broken inputs next to valid ones; returns image_id -> expected reason."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    shutil.copy(COLIN_PNG / "colin27_t1_v0_s080.png", folder / "good.png")
    np.save(folder / "good.npy", real_slices(1)[0])
    (folder / "empty.png").write_bytes(b"")
    gz = (VOLUMES / "colin27_t1.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(gz[: len(gz) // 3])
    (folder / "wrong_magic.png").write_bytes(b"GIF89a this is not a png at all" * 10)
    ds = _ct_dataset(64, 64, generate_uid())
    ds.save_as(folder / "nopixels.dcm", enforce_file_format=True)  # no PixelData
    nib.save(nib.Nifti1Image(np.full((20, 20, 5), np.nan, np.float32), np.eye(4)), folder / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((20, 20, 5, 3), np.int16), np.eye(4)), folder / "fourd.nii.gz")
    Image.fromarray(real_slices(1)[0][:8, :8]).save(folder / "tiny.png")
    Image.fromarray(np.full((64, 64), 77, np.uint8)).save(folder / "constant.png")
    (folder / "notes.txt").write_text("scan notes, not an image\n")
    shutil.copy(COLIN_PNG / "colin27_t1_v0_s081.png", folder / "unreadable.png")
    os.chmod(folder / "unreadable.png", 0)
    os.symlink(folder / "gone.png", folder / "broken_link.png")
    outside.mkdir()
    shutil.copy(COLIN_PNG / "colin27_t1_v0_s082.png", outside / "elsewhere.png")
    os.symlink(outside / "elsewhere.png", folder / "external_link.png")
    os.mkfifo(folder / "pipe.png")
    return {
        "empty.png": "empty file (0 bytes)",
        "truncated.nii.gz": "truncated gzip stream",
        "wrong_magic.png": "not a recognised image format",
        "nopixels.dcm": "DICOM without pixel data",
        "nan.nii.gz": "all-NaN volume",
        "fourd.nii.gz": "4D volume: choose a volume index",
        "tiny.png": "image smaller than 16×16",
        "constant.png": "constant image",
        "notes.txt": "non-image file",
        "unreadable.png": "unreadable file: permission denied",
        "broken_link.png": "broken symlink",
        "external_link.png": "symlink points outside the audited root",
        "pipe.png": "not a regular file (FIFO, socket or device)",
    }


@pytest.fixture
def deny_unreadable(monkeypatch):
    """chmod 000 does not stop root (tests often run as root): make opening any file named
    ``unreadable.png`` fail like it would for an ordinary user."""
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).name == "unreadable.png":
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    return lambda: monkeypatch.setattr(builtins, "open", guarded)


def test_corrupt_corpus_gets_specific_reasons_and_valid_files_survive(tmp_path, deny_unreadable):
    expected = _corrupt_corpus(tmp_path / "root", tmp_path / "outside")
    deny_unreadable()
    calls = []
    res = ingest([tmp_path / "root"], IngestConfig(), S, tmp_path / "w",
                 progress=lambda done, total: calls.append((done, total)))
    m = res.manifest.set_index("image_id")
    got = m.loc[m["status"] == "quarantined", "reason"].to_dict()
    assert got == expected
    assert sorted(m.index[m["status"] == "ok"]) == ["good.npy", "good.png"]
    assert res.pixels().shape == (2, S, S)
    assert (m.loc[list(expected), "row"] == -1).all()
    assert calls[-1] == (15, 15) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_external_symlink_followed_when_allowed(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    shutil.copy(COLIN_PNG / "colin27_t1_v0_s082.png", tmp_path / "outside" / "x.png")
    os.symlink(tmp_path / "outside" / "x.png", tmp_path / "root" / "link.png")
    m = ingest([tmp_path / "root"], IngestConfig(follow_external_symlinks=True), S, tmp_path / "w").manifest
    assert list(m["status"]) == ["ok"] and list(m["image_id"]) == ["link.png"]


def test_size_limits(tmp_path):
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "big.npy", np.random.default_rng(0).random((300, 300), np.float32))
    shutil.copy(COLIN_PNG / "colin27_t1_v0_s080.png", tmp_path / "in" / "small.png")
    shutil.copy(VOLUMES / "colin27_t1.nii.gz", tmp_path / "in" / "vol.nii.gz")
    m = ingest([tmp_path / "in"], IngestConfig(max_pixels=200 * 200), S, tmp_path / "w").manifest
    m = m.set_index("image_id")
    assert m.loc["big.npy", "reason"] == "image too large: 90000 pixels > limit 40000"
    assert m.loc["vol.nii.gz", "reason"] == f"image too large: {181 * 217 * 181} pixels > limit 40000"
    assert m.loc["small.png", "status"] == "ok"
    m = ingest([tmp_path / "in" / "big.npy"], IngestConfig(max_file_bytes=1000), S, tmp_path / "w2").manifest
    assert m["reason"].iloc[0].startswith("file too large: ")


def test_patient_identifiers_never_leave_the_dicom(tmp_path, caplog):
    from pydicom.uid import generate_uid

    uid = generate_uid()
    write_ct_series(tmp_path / "root" / "ct", real_slices(3), seed=5, series_uid=uid)
    ds = _ct_dataset(64, 64, generate_uid())
    ds.save_as(tmp_path / "root" / "nopix.dcm", enforce_file_format=True)
    (tmp_path / "root" / "junk.dcm").write_bytes(b"\x00" * 128 + b"DICM" + PLANTED_NAME.encode() * 3)
    with caplog.at_level(logging.DEBUG):
        res = ingest([tmp_path / "root"], IngestConfig(), S, tmp_path / "w")
    m = res.manifest
    assert (m["status"] == "ok").sum() == 3 and (m["status"] == "quarantined").sum() == 2
    csv = tmp_path / "manifest.csv"
    m.to_csv(csv, index=False)
    qcsv = write_quarantine_csv(m, tmp_path / "quarantine.csv")
    text = csv.read_text() + qcsv.read_text() + caplog.text
    for secret in (PLANTED_NAME, "Zyxwvut", PLANTED_ID, uid, "19610203", "20240101"):
        assert secret not in text
