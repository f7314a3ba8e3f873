#!/usr/bin/env python3
"""Writes an axial MR DICOM series (one file per slice) from a NIfTI volume or a synthetic phantom.

Used by the tests of the DICOM import and handy for trying it by hand:

    $CGGM_PYTHON scripts/make-dicom.py --nifti case_flair.nii.gz --out flair/
    $CGGM_PYTHON scripts/make-dicom.py --shape 32,32,16 --out t1.zip --modality t1

Each file carries what a converter needs to rebuild the grid: ImagePositionPatient (one slice
thickness apart), ImageOrientationPatient (axial), PixelSpacing, SliceThickness, InstanceNumber,
SeriesInstanceUID, FrameOfReferenceUID. Options break a series the ways the import must refuse:
--drop-slice (a missing slice), --origin-shift (another grid: not co-registered), --series-uid
(two series written into one folder are a mixed upload). --flip-rows writes the rows from
anterior to posterior (ImageOrientationPatient 1\0\0\0\-1\0, the slice normal pointing down),
as many scanners store them: a reader must follow the geometry, not assume an order.
"""

import argparse
import hashlib
import io
import os
import zipfile

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def phantom(shape, seed):
    """A bright ellipsoid with a brighter core on a dark background, different per seed."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(x**2 + y**2 + (z * 1.3) ** 2)
    rng = np.random.default_rng(seed)
    volume = np.where(r < 0.8, 400.0 + 100.0 * seed, 0.0)
    volume += np.where(r < 0.3, 600.0, 0.0)
    volume += rng.normal(0, 10, shape) * (r < 0.8)
    return volume


def uid_from(text):
    """A stable DICOM UID from a text (so two runs can write the same study or series)."""
    return "2.25." + str(int(hashlib.sha1(text.encode()).hexdigest()[:30], 16))


def slice_dataset(pixels, k, args, series_uid, study_uid, frame_uid):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName = args.patient
    ds.PatientID = args.patient
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.SeriesNumber = args.series_number
    ds.SeriesDescription = args.description or args.modality
    ds.StudyDate = "20260101"
    ds.SeriesDate = "20260101"
    ds.AcquisitionTime = "120000"
    ds.Manufacturer = "CGGM synthetic"
    ds.MagneticFieldStrength = 3
    ds.InstanceNumber = k + 1
    position = [args.origin[0], args.origin[1], args.origin[2] + args.origin_shift + k * args.spacing[2]]
    if args.flip_rows:
        # The first row is the last y: the same voxels, stored from the other end.
        ds.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]
        position[1] += (pixels.shape[0] - 1) * args.spacing[1]
    else:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.SliceLocation = float(position[2])
    ds.PixelSpacing = [float(args.spacing[1]), float(args.spacing[0])]
    ds.SliceThickness = float(args.spacing[2])
    ds.SpacingBetweenSlices = float(args.spacing[2])
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nifti", help="3-D NIfTI volume to write as DICOM (else a synthetic phantom)")
    p.add_argument("--shape", default="32,32,16", help="phantom shape x,y,z (without --nifti)")
    p.add_argument("--seed", type=int, default=0, help="phantom intensity variant")
    p.add_argument("--out", required=True, help="output folder, or a .zip file")
    p.add_argument("--modality", default="flair", help="the series' modality (and SeriesDescription)")
    p.add_argument("--description", help="SeriesDescription, when other than --modality")
    p.add_argument("--patient", default="SYNTH-001")
    p.add_argument("--series-number", type=int, default=1)
    p.add_argument("--series-uid", help="text the SeriesInstanceUID is derived from (default: modality)")
    p.add_argument("--spacing", default="1,1,1", help="voxel size x,y,z in mm")
    p.add_argument("--origin", default="-16,-16,-8", help="first voxel's position in mm")
    p.add_argument("--origin-shift", type=float, default=0.0, help="move the series along z (mm)")
    p.add_argument("--drop-slice", type=int, action="append", default=[], help="leave out slice K")
    p.add_argument("--flip-rows", action="store_true", help="store each slice's rows anterior to posterior")
    args = p.parse_args()
    args.spacing = [float(v) for v in args.spacing.split(",")]
    args.origin = [float(v) for v in args.origin.split(",")]

    if args.nifti:
        import nibabel

        volume = np.asarray(nibabel.load(args.nifti).dataobj, dtype=np.float64)
    else:
        volume = phantom([int(v) for v in args.shape.split(",")], args.seed)
    low, high = float(volume.min()), float(volume.max())
    scaled = (volume - low) / (high - low if high > low else 1.0) * 4000.0

    series_uid = uid_from(f"{args.patient}/{args.series_uid or args.modality}")
    study_uid = uid_from(f"{args.patient}/study")
    frame_uid = uid_from(f"{args.patient}/frame/{args.origin_shift}")
    files = []
    for k in range(scaled.shape[2]):
        if k in args.drop_slice:
            continue
        # DICOM rows run along y, columns along x.
        pixels = scaled[:, :, k].T
        if args.flip_rows:
            pixels = pixels[::-1]
        ds = slice_dataset(np.ascontiguousarray(pixels), k, args, series_uid, study_uid, frame_uid)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        files.append((f"{args.modality}_{args.series_number:03d}_{k + 1:04d}.dcm", buffer.getvalue()))

    if args.out.endswith(".zip"):
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with zipfile.ZipFile(args.out, "a", zipfile.ZIP_DEFLATED) as archive:
            for name, data in files:
                archive.writestr(f"{args.modality}/{name}", data)
    else:
        os.makedirs(args.out, exist_ok=True)
        for name, data in files:
            with open(os.path.join(args.out, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
