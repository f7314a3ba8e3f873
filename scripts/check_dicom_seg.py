#!/usr/bin/env python3
"""Checks a DICOM SEG against the NIfTI prediction it was written from, independently of the writer:

    $CGGM_PYTHON scripts/check_dicom_seg.py SEG.dcm PRED.nii.gz REFERENCE_SERIES_DIR

highdicom reads the SEG and gives each segment's mask per source instance of the reference series
(read with pydicom); every pixel is placed in patient space from the instance's own geometry
(P = IPP + c*dc*X + r*dr*Y, LPS), then on the prediction's grid through its NIfTI affine (nibabel;
RAS = diag(-1, -1, 1) * LPS). Each segment's mask must equal the prediction's label voxel for voxel
(segment 1 NCR = label 1, 2 ED = label 2, 3 ET = label 4, or 3 as BraTS 2023 numbers it), with
every voxel covered once. Prints the counts; exits 1 with the number of mismatching voxels.
"""

import os
import sys

import highdicom
import nibabel
import numpy as np
import pydicom

LABELS = {1: (1,), 2: (2,), 3: (4, 3)}
CODES = {1: "6574001", 2: "79654002", 3: "108369006"}


def reference_instances(folder):
    instances = []
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            instances.append(pydicom.dcmread(os.path.join(root, name), stop_before_pixels=True))
    return instances


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    seg_path, prediction_path, reference_dir = sys.argv[1:]
    seg = highdicom.seg.segread(seg_path)
    numbers = sorted(int(s.SegmentNumber) for s in seg.SegmentSequence)
    if numbers != [1, 2, 3]:
        sys.exit(f"segments {numbers}, expected [1, 2, 3]")
    for item in seg.SegmentSequence:
        code = item.SegmentedPropertyTypeCodeSequence[0].CodeValue
        if code != CODES[int(item.SegmentNumber)]:
            sys.exit(f"segment {item.SegmentNumber} has type code {code}, expected {CODES[int(item.SegmentNumber)]}")
    image = nibabel.load(prediction_path)
    prediction = np.asarray(image.dataobj).astype(np.int64)
    prediction = prediction.reshape(prediction.shape[:3])
    to_voxel = np.linalg.inv(image.affine)
    instances = reference_instances(reference_dir)
    uids = [ds.SOPInstanceUID for ds in instances]
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=[1, 2, 3],
        assert_missing_frames_are_empty=True,
    )
    placed = np.zeros(prediction.shape + (3,), dtype=bool)
    covered = np.zeros(prediction.shape, dtype=np.int64)
    for i, ds in enumerate(instances):
        rows, columns = int(ds.Rows), int(ds.Columns)
        x = np.array(ds.ImageOrientationPatient[:3], dtype=float)
        y = np.array(ds.ImageOrientationPatient[3:], dtype=float)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
        lps = (
            np.array(ds.ImagePositionPatient, dtype=float)
            + (c[..., None] * dc) * x
            + (r[..., None] * dr) * y
        )
        ras = lps * np.array([-1.0, -1.0, 1.0])
        homogeneous = np.concatenate([ras, np.ones(ras.shape[:2] + (1,))], axis=-1)
        voxel = homogeneous @ to_voxel.T
        index = np.rint(voxel[..., :3]).astype(np.int64)
        off = np.abs(voxel[..., :3] - index).max()
        if off > 0.05:
            sys.exit(f"{ds.SOPInstanceUID}: pixels lie {off:.3f} voxels off the prediction's grid")
        if (index < 0).any() or (index >= np.array(prediction.shape)).any():
            sys.exit(f"{ds.SOPInstanceUID}: pixels fall outside the prediction's grid")
        ii, jj, kk = index[..., 0], index[..., 1], index[..., 2]
        covered[ii, jj, kk] += 1
        placed[ii, jj, kk, :] = masks[i].astype(bool)
    if (covered != 1).any():
        sys.exit(f"{int((covered != 1).sum())} voxels are not covered exactly once by the reference series")
    mismatches = 0
    for s, labels in LABELS.items():
        truth = np.isin(prediction, labels)
        wrong = int((placed[..., s - 1] != truth).sum())
        print(f"segment {s}: {int(truth.sum())} voxels in the prediction, {int(placed[..., s - 1].sum())} in the SEG, {wrong} mismatches")
        mismatches += wrong
    print(f"{seg.NumberOfFrames} frames, {len(instances)} source instances, {mismatches} mismatching voxels")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
