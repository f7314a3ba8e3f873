#!/usr/bin/env python3
"""Convert pre-extracted multimodal features into a CGGM Studio feature dataset.

Inputs (the layouts users hold):
  * a MulT / MMSA pickle (.pkl): {"train": {...}, "valid": {...}, "test": {...}} (MMSA also spells
    "dev" for valid), each split a dict with per-modality arrays ("text", "audio", "vision";
    [N, T, D]) and labels under "labels" (MulT, [N, 1, 1] or one-hot [N, K, 2] for IEMOCAP),
    "regression_labels" or "classification_labels" (MMSA); optional "<modality>_lengths".
  * an .npz dump with keys "<split>_<modality>", "<split>_labels" and optional
    "<split>_<modality>_lengths" (split in train, valid, test).

Output: DIR/dataset.json and DIR/{train,valid,test}.safetensors (README "Feature datasets").
Non-finite feature values (MOSI's audio holds -inf) are replaced by 0 and counted in the report.
Run with the project's venv python (scripts/with-torch.sh sets $CGGM_PYTHON):
  $CGGM_PYTHON scripts/import-features.py mosi_data.pkl --out data/mosi --task regression
"""
import argparse
import json
import pickle
import struct
import sys
from pathlib import Path

import numpy as np

SPLITS = ("train", "valid", "test")
ALIASES = {"valid": ("valid", "dev", "val", "validation")}
LABEL_KEYS = ("labels", "regression_labels", "classification_labels", "label")
SKIP = {"id", "raw_text", "text_bert", "annotations"}


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def write_safetensors(path, tensors):
    """Writes {name: np.ndarray} in the safetensors format (header JSON + little-endian bytes)."""
    dtypes = {np.dtype("float32"): "F32", np.dtype("int64"): "I64"}
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtypes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)
    tmp.replace(path)


def load_pickle(path):
    with open(path, "rb") as f:
        data = pickle.load(f, encoding="latin1")
    if not isinstance(data, dict):
        fail(f"{path}: expected a dict of splits (train/valid/test), got {type(data).__name__}")
    splits = {}
    for split in SPLITS:
        key = next((k for k in ALIASES.get(split, (split,)) if k in data), None)
        if key is None:
            fail(f"{path}: no {split!r} split (keys: {sorted(data)}); MulT/MMSA pickles hold train, valid (or dev) and test")
        splits[split] = dict(data[key])
    return splits


def load_npz(path):
    data = np.load(path, allow_pickle=False)
    splits = {s: {} for s in SPLITS}
    for key in data.files:
        split, _, rest = key.partition("_")
        split = next((s for s in SPLITS if split in ALIASES.get(s, (s,))), None)
        if split is None or not rest:
            fail(f"{path}: key {key!r} is not <split>_<modality> or <split>_labels (split in train, valid, test)")
        splits[split][rest] = data[key]
    for split in SPLITS:
        if not splits[split]:
            fail(f"{path}: no keys for the {split!r} split (expected {split}_<modality> and {split}_labels)")
    return splits


def labels_of(split_name, split, task):
    key = next((k for k in LABEL_KEYS if k in split), None)
    if key is None:
        fail(f"the {split_name} split has no labels (looked for {', '.join(LABEL_KEYS)})")
    y = np.asarray(split[key])
    n = y.shape[0]
    if y.ndim == 3 and y.shape[2] == 2:  # MulT IEMOCAP: per emotion one-hot (no, yes)
        y = y[:, :, 1].argmax(axis=1)
    elif y.ndim >= 2 and y.reshape(n, -1).shape[1] > 1:
        y = y.reshape(n, -1).argmax(axis=1)  # one-hot classes
    y = y.reshape(n)
    if task == "classification":
        if np.issubdtype(y.dtype, np.floating) and not np.all(np.equal(np.mod(y, 1), 0)):
            fail(f"the {split_name} labels are not whole numbers: use --task regression")
        return y.astype(np.int64)
    return y.astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", type=Path, help="a MulT/MMSA .pkl or an .npz dump")
    ap.add_argument("--out", type=Path, required=True, help="the dataset folder to write")
    ap.add_argument("--task", choices=("classification", "regression"),
                    help="default: regression for non-integer labels, else classification")
    ap.add_argument("--modalities", default="text,audio,vision", help="comma-separated, in order")
    ap.add_argument("--classes", help="comma-separated class names (default 0..K-1)")
    args = ap.parse_args()
    if not args.input.is_file():
        fail(f"{args.input} does not exist")
    if args.input.suffix == ".npz":
        splits = load_npz(args.input)
    else:
        splits = load_pickle(args.input)
    modalities = [m for m in args.modalities.split(",") if m]
    for split_name, split in splits.items():
        missing = [m for m in modalities if m not in split]
        if missing:
            fail(f"the {split_name} split has no {', '.join(missing)} (keys: {sorted(k for k in split if k not in SKIP)}); pass --modalities")
    task = args.task
    if task is None:
        train = splits["train"]
        y = np.asarray(next((train[k] for k in LABEL_KEYS if k in train), []))
        task = "regression" if np.issubdtype(y.dtype, np.floating) and not np.all(np.equal(np.mod(y, 1), 0)) else "classification"
    labels = {s: labels_of(s, splits[s], task) for s in SPLITS}
    args.out.mkdir(parents=True, exist_ok=True)
    dims, report = {}, {"replaced_non_finite": {}}
    for split_name in SPLITS:
        split = splits[split_name]
        n = labels[split_name].shape[0]
        if n == 0:
            fail(f"the {split_name} split holds zero samples")
        tensors = {}
        for m in modalities:
            x = np.asarray(split[m], dtype=np.float32)
            if x.ndim == 2:
                x = x[:, None, :]
            if x.ndim != 3 or x.shape[0] != n:
                fail(f"{split_name}/{m} has shape {x.shape}; expected [{n}, T, D] or [{n}, D]")
            bad = ~np.isfinite(x)
            if bad.any():
                report["replaced_non_finite"][f"{split_name}/{m}"] = int(bad.sum())
                x = np.where(bad, 0.0, x).astype(np.float32)
            if m in dims and dims[m] != x.shape[1:]:
                fail(f"{m} has [T, D] = {list(x.shape[1:])} in {split_name} but {list(dims[m])} in train")
            dims[m] = x.shape[1:]
            tensors[m] = x
            for key in (f"{m}_lengths", f"{m}_lens"):
                if key in split:
                    lengths = np.clip(np.asarray(split[key]).reshape(n).astype(np.int64), 1, x.shape[1])
                    tensors[f"{m}.lengths"] = lengths
        tensors["labels"] = labels[split_name]
        write_safetensors(args.out / f"{split_name}.safetensors", tensors)
    spec = {"format": "cggm-features", "task": task,
            "modalities": [{"name": m, "dim": int(dims[m][1]), "seq_len": int(dims[m][0])} for m in modalities],
            "description": f"imported from {args.input.name}"}
    all_y = np.concatenate([labels[s] for s in SPLITS])
    if task == "classification":
        k = int(all_y.max()) + 1
        names = args.classes.split(",") if args.classes else [str(i) for i in range(k)]
        if len(names) < k:
            fail(f"--classes names {len(names)} classes but the labels go up to {k - 1}")
        spec["classes"] = names
    else:
        lo, hi = float(all_y.min()), float(all_y.max())
        spec["label_range"] = [-3.0, 3.0] if lo >= -3 and hi <= 3 else [lo, hi]
    (args.out / "dataset.json").write_text(json.dumps(spec, indent=2))
    for where, count in report["replaced_non_finite"].items():
        print(f"note: replaced {count} non-finite values (NaN/inf) in {where} by 0")
    print(json.dumps({"out": str(args.out), "task": task,
                      "samples": {s: int(labels[s].shape[0]) for s in SPLITS}, **report}))


if __name__ == "__main__":
    main()
