"""Write tests/data/formats/: one real volume in every supported volume format.

The voxels are a 4 mm crop of the Colin27 T1 (``../shared/data/volumes``, see its README
for the licence), scaled to int16, stored in a non-canonical axis order (S, L, P) with a
10° in-plane rotation, so the direction matrix is neither the identity nor symmetric.  The
NIfTI file is written by nibabel; SimpleITK 2.5.7 reads it and writes NRRD (raw, gzip),
NHDR + raw, MHA (raw, zlib), MHD + raw and MHD + zraw — an independent implementation
of the ITK conventions our own readers follow, so the tests compare our readers against
ITK's writer rather than against themselves.  MGZ/MGH are written by nibabel from the same
voxels and affine (FreeSurfer itself is not installable here).

Run once (``pip install SimpleITK==2.5.7`` first; it is not a dependency of the project):

    python scripts/make_format_fixtures.py
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, ornt_transform

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "volumes" / "colin27_t1.nii.gz"
OUT = ROOT / "tests" / "data" / "formats"


def canonical_volume() -> tuple[np.ndarray, np.ndarray]:
    """(46, 55, 42) int16 voxels in RAS order and their voxel→RAS affine."""
    img = nib.as_closest_canonical(nib.load(SOURCE))
    vol = np.asanyarray(img.dataobj)[::4, ::4, 8:-8:4].astype(np.int16) * 7 - 100
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-90.0, -126.0, -60.0]
    return vol, affine


def stored_volume() -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored S, L, P, in a world rotated 10° about the z axis."""
    vol, affine = canonical_volume()
    stored = nib.Nifti1Image(vol, affine).as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt("SLP")))
    theta = np.deg2rad(10.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    return np.asanyarray(stored.dataobj), rotation @ stored.affine


def main() -> None:
    try:
        import SimpleITK as sitk
    except ImportError:
        raise SystemExit("this script writes the fixtures with SimpleITK: pip install SimpleITK==2.5.7") from None

    OUT.mkdir(parents=True, exist_ok=True)
    data, affine = stored_volume()
    nifti = nib.Nifti1Image(data, affine)
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=1)
    nib.save(nifti, OUT / "colin.nii.gz")
    nib.save(nib.MGHImage(data, affine), OUT / "colin.mgz")
    nib.save(nib.MGHImage(data, affine), OUT / "colin.mgh")
    read = sitk.ReadImage(str(OUT / "colin.nii.gz"))
    image = sitk.GetImageFromArray(sitk.GetArrayFromImage(read))
    image.CopyInformation(read)  # geometry only: no NIfTI key/value pairs in the headers
    for name, compress in [("colin.nrrd", False), ("colin_gz.nrrd", True), ("colin.nhdr", False),
                           ("colin.mha", False), ("colin_z.mha", True), ("colin.mhd", False),
                           ("colin_z.mhd", True)]:
        sitk.WriteImage(image, str(OUT / name), useCompression=compress)
    for path in sorted(OUT.iterdir()):
        print(f"{path.name:16s} {path.stat().st_size:8d} bytes")


if __name__ == "__main__":
    main()
