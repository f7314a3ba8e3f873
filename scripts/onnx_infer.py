#!/usr/bin/env python3
"""Segment one NIfTI study with a model from `cggm export --format onnx`, in ONNX Runtime.

The preprocessing is `cggm infer`'s (trainer/src/data/study.rs, trainer/src/predict.rs), read
from the model's metadata where it is a parameter:

1. the four modality volumes are read (scl_slope/scl_inter applied in float32), each z-scored
   over its nonzero voxels (mean and population std in float64, applied in float32; std <= 1e-8
   counts as 1; a brain voxel that lands exactly on 0 becomes the smallest positive float32);
2. the model's modalities (metadata `cggm.modalities`, in that order) are its input channels;
3. the brain is every voxel where some modality is nonzero; only axial slices (along z) that hold
   brain are predicted, as [X, Y] images zero-padded at their end to multiples of
   `cggm.spatial_multiple` (16), in batches;
4. the argmax over classes (the model's `labels` output), cropped back, is written into an empty
   volume and masked to the brain; the internal classes 0..3 become the label values of
   `--labels` (metadata `cggm.label_values`).

Usage:
    python scripts/onnx_infer.py --model model.onnx --case BraTS2021_00000/ --out seg.nii.gz
    python scripts/onnx_infer.py --model model.onnx --case a_flair.nii.gz --case a_t1ce.nii.gz \
        --case a_t1.nii.gz --case a_t2.nii.gz --out seg.nii.gz --labels brats2023
    python scripts/onnx_infer.py --model model.onnx --case BRATS_001.nii.gz --out seg.nii.gz

--case takes a BraTS case folder, the four modality files (named ..._flair, _t1ce, _t1, _t2 or
the BraTS 2023 suffixes t2f, t1c, t1n, t2w), or one MSD Task01 4-D file (channels FLAIR, T1w,
T1gd, T2w). Needs numpy, nibabel, onnx and onnxruntime (scripts/python-requirements.txt).
"""

import argparse
import json
import os
import re
import sys

import nibabel as nib
import numpy as np
import onnx
import onnxruntime as ort

# The project's fixed modality order (trainer/src/data/mod.rs `Modality::ALL`) and the file-name
# suffixes of each (`Modality::suffixes`).
MODALITIES = ["flair", "t1ce", "t1", "t2"]
SUFFIXES = {
    "flair": ["flair", "t2f", "t2flair"],
    "t1ce": ["t1ce", "t1gd", "t1c", "t1ce1", "t1post"],
    "t1": ["t1", "t1n", "t1w"],
    "t2": ["t2", "t2w"],
}
# MSD Task01's 4-D channel order.
MSD_CHANNELS = ["flair", "t1", "t1ce", "t2"]


def metadata(model_path):
    model = onnx.load(model_path, load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def nifti_stem(path):
    name = os.path.basename(path)
    return re.sub(r"\.nii(\.gz)?$", "", name, flags=re.IGNORECASE)


def modality_of(path):
    stem = nifti_stem(path)
    cut = max(stem.rfind("_"), stem.rfind("-"))
    if cut < 0:
        return None
    suffix = stem[cut + 1 :].lower()
    for m, names in SUFFIXES.items():
        if suffix in names:
            return m
    return None


def read_volume(path):
    """The voxels as float32 with the header's scaling applied in float32, as our reader does."""
    img = nib.load(path)
    data = np.asarray(img.dataobj.get_unscaled()).astype(np.float32)
    slope, inter = img.header["scl_slope"], img.header["scl_inter"]
    slope = np.float32(slope) if np.isfinite(slope) else np.float32(0)
    inter = np.float32(inter) if np.isfinite(inter) else np.float32(np.nan)
    if slope != 0 and np.isfinite(inter) and (slope, inter) != (1, 0):
        data = data * slope + inter
    return img, data


def z_score(volume):
    """study.rs `z_score`: over the nonzero voxels, in place."""
    brain = volume != 0
    if not brain.any():
        return volume
    values = volume[brain].astype(np.float64)
    n = values.size
    mean = values.sum() / n
    std = np.sqrt(max((values * values).sum() / n - mean * mean, 0.0))
    std = std if std > 1e-8 else 1.0
    z = (volume[brain] - np.float32(mean)) * np.float32(1.0 / std)
    z[z == 0] = np.finfo(np.float32).tiny
    volume[brain] = z
    return volume


def load_study(cases):
    """[4, X, Y, Z] float32 in MODALITIES order, z-scored, and the reference image (geometry)."""
    if len(cases) == 1 and os.path.isdir(cases[0]):
        folder = cases[0]
        files = sorted(
            os.path.join(folder, f)
            for f in os.listdir(folder)
            if re.search(r"\.nii(\.gz)?$", f, flags=re.IGNORECASE)
        )
        cases = [f for f in files if modality_of(f) is not None]
    if len(cases) == 1:
        ref, data = read_volume(cases[0])
        if data.ndim != 4 or data.shape[3] != 4:
            sys.exit(f"{cases[0]}: one file must be an MSD 4-D image with 4 channels")
        volumes = {m: np.ascontiguousarray(data[..., c]) for c, m in enumerate(MSD_CHANNELS)}
    else:
        by_modality = {}
        for path in cases:
            m = modality_of(path)
            if m is None:
                sys.exit(f"{path}: its name does not end in a modality suffix (_flair, _t1ce, _t1, _t2)")
            by_modality[m] = path
        missing = [m for m in MODALITIES if m not in by_modality]
        if missing:
            sys.exit(f"missing modalities: {', '.join(missing)}")
        volumes = {}
        ref = None
        for m in MODALITIES:
            img, data = read_volume(by_modality[m])
            if data.ndim == 4 and data.shape[3] == 1:
                data = data[..., 0]
            volumes[m] = data
            if ref is None:
                ref = img
    images = np.stack([z_score(volumes[m].astype(np.float32)) for m in MODALITIES])
    return images, ref


def segment(model_path, images, batch=8, labels="brats2021", providers=None):
    """Internal classes [X, Y, Z] (uint8) and the written label values, as `cggm infer`."""
    meta = metadata(model_path)
    if meta.get("cggm.task") != "segmentation":
        sys.exit(f"{model_path} is not a CGGM segmentation export (cggm.task = {meta.get('cggm.task')!r})")
    order = meta["cggm.modalities"].split(",")
    multiple = int(meta["cggm.spatial_multiple"])
    values = json.loads(meta["cggm.label_values"])
    if labels not in values:
        sys.exit(f"--labels {labels}: the model knows {', '.join(values)}")
    session = ort.InferenceSession(model_path, providers=providers or ["CPUExecutionProvider"])
    channels = images[[MODALITIES.index(m) for m in order]]  # [M, X, Y, Z]
    _, nx, ny, nz = channels.shape
    brain = (images != 0).any(axis=0)  # [X, Y, Z]
    slices = np.nonzero(brain.any(axis=(0, 1)))[0]
    px, py = -(-nx // multiple) * multiple, -(-ny // multiple) * multiple
    stack = np.zeros((len(slices), len(order), px, py), dtype=np.float32)
    stack[:, :, :nx, :ny] = channels[..., slices].transpose(3, 0, 1, 2)
    classes = np.zeros((nx, ny, nz), dtype=np.uint8)
    for start in range(0, len(slices), batch):
        (pred,) = session.run(["labels"], {"image": stack[start : start + batch]})
        classes[:, :, slices[start : start + batch]] = pred[:, :nx, :ny].transpose(1, 2, 0)
    classes *= brain.astype(np.uint8)
    lut = np.array(values[labels], dtype=np.uint8)
    return classes, lut[classes]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the .onnx file from cggm export")
    parser.add_argument("--case", action="append", required=True, help="case folder, 4 modality files, or an MSD 4-D file")
    parser.add_argument("--out", required=True, help="output segmentation (.nii.gz or .nii)")
    parser.add_argument("--labels", default="brats2021", help="brats2021 (default), brats2023 or msd")
    parser.add_argument("--batch", type=int, default=8, help="slices per run (default 8)")
    args = parser.parse_args()
    images, ref = load_study(args.case)
    _, written = segment(args.model, images, args.batch, args.labels)
    out = nib.Nifti1Image(written, ref.affine, header=ref.header)
    out.set_data_dtype(np.uint8)
    out.header["scl_slope"], out.header["scl_inter"] = 1, 0
    nib.save(out, args.out)
    counts = {int(v): int((written == v).sum()) for v in np.unique(written)}
    print(json.dumps({"out": args.out, "shape": list(written.shape), "voxels_per_label": counts}))


if __name__ == "__main__":
    main()
