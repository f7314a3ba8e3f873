"""Drives a live `cggm serve` through its MONAI Label API with the real client of the `monailabel`
package (what 3D Slicer's MONAI Label module and OHIF's extension speak), for
server/tests/monailabel.rs.

Usage: monailabel_client.py SERVER_URL TOKEN CASE_DIR REFERENCE_SEG WORK_DIR WEB_IMAGE

CASE_DIR holds <case>_{flair,t1ce,t1,t2}.nii.gz; REFERENCE_SEG is what `cggm infer` wrote for
those four files; WEB_IMAGE is the image ID of the same four files uploaded through the pages
(`POST /api/studies`), which the server gives back as one 4-D image. The script makes the study's 4-D image (channels FLAIR, T1w, T1gd, T2w, the
documented order) with nibabel, then: info, upload_image, datastore, infer by image ID,
create_session / get_session / infer by session / remove_session, save_label twice (two versions),
download_label. Every label is compared with REFERENCE_SEG voxel for voxel (nibabel). The last line
printed is a JSON report; any failed expectation exits non-zero with its reason.
"""

import json
import os
import sys
import warnings

import nibabel as nib
import numpy as np

# The client module imports `cgi`, deprecated in Python 3.11 and 3.12.
warnings.filterwarnings("ignore", category=DeprecationWarning)
from monailabel.client import MONAILabelClient  # noqa: E402
from monailabel.client.client import MONAILabelClientException  # noqa: E402

url, token, case_dir, reference_path, work, web_image = sys.argv[1:7]
MODALITY_ORDER = ["flair", "t1", "t1ce", "t2"]


def client():
    # One client per call: its multipart requests store their content-length in the client's own
    # header dict (MONAILabelClient.http_multipart updates self._headers once auth is set), which
    # would then go out with the next, body-less request.
    c = MONAILabelClient(url, tmpdir=work, client_id="cggm-test")
    c.update_auth({"token_type": "Bearer", "access_token": token})
    return c


def expect(condition, message):
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def compare(path, reference):
    got = np.asarray(nib.load(path).dataobj)
    expect(got.shape == reference.shape, f"{path}: shape {got.shape} != {reference.shape}")
    return {
        "shape": list(got.shape),
        "differing_voxels": int(np.count_nonzero(got != reference)),
        "values": sorted(int(v) for v in np.unique(got)),
    }


case = os.path.basename(case_dir.rstrip("/"))
sources = [nib.load(os.path.join(case_dir, f"{case}_{m}.nii.gz")) for m in MODALITY_ORDER]
channels = [np.asarray(s.dataobj, dtype=np.float32) for s in sources]
image_4d = os.path.join(work, "patient_x.nii.gz")
nib.save(nib.Nifti1Image(np.stack(channels, axis=-1), sources[0].affine), image_4d)
reference = np.asarray(nib.load(reference_path).dataobj)
report = {"reference_values": sorted(int(v) for v in np.unique(reference))}

info = client().info()
models = sorted(info["models"])
expect(len(models) == 1, f"one finished segmentation run, got {models}")
model = models[0]
report["model"] = model
described = info["models"][model]
expect(described["type"] == "segmentation", described)
expect(described["dimension"] == 3, described)
expect(described["labels"] == info["labels"], described)
# In value order: Slicer numbers its segments 1, 2, 3 in the order of these keys when it saves.
expect(list(info["labels"].values()) == [1, 2, 4], info["labels"])
expect(info["datastore"]["total"] == 1, info["datastore"])

uploaded = client().upload_image(image_4d, image_id="patient_x")
expect(uploaded["image"] == "patient_x", uploaded)
store = client().datastore()
expect("patient_x" in store["objects"], store)

label_path, params = client().infer(model, "patient_x", {"device": "cpu"})
expect(label_path is not None, f"infer returned no label file ({params})")
expect(params["label_names"] == info["labels"], params)
report["datastore_label"] = compare(label_path, reference)

# The study of four files, as uploaded through the pages, by its default image ID.
web_label, _ = client().infer(model, web_image, {"device": "cpu"})
report["web_study_label"] = compare(web_label, reference)

session = client().create_session(image_4d)
session_id = session["session_id"]
expect(client().get_session(session_id)["shape"] == list(reference.shape), session)
session_label, _ = client().infer(model, "", {"device": "cpu"}, session_id=session_id)
report["session_label"] = compare(session_label, reference)
client().remove_session(session_id)
try:
    client().get_session(session_id)
    expect(False, "the removed session is still there")
except MONAILabelClientException as e:
    expect(e.status_code == 404, f"expected 404 for a removed session, got {e.status_code}")

# A reader's correction: the model's label with the enhancing tumour grown by one voxel row, saved
# twice (a first draft, then the final one), both as `final`.
label = nib.load(label_path)
data = np.asarray(label.dataobj).astype(np.uint8)
versions = []
for i, value in enumerate([1, 4]):
    corrected = data.copy()
    corrected[0, :, i] = value
    path = os.path.join(work, f"corrected-{i}.nii.gz")
    nib.save(nib.Nifti1Image(corrected, label.affine), path)
    saved = client().save_label("patient_x", path, tag="final")
    expect(saved["version"] == i + 1, saved)
    versions.append(corrected)
store = client().datastore()
final = store["objects"]["patient_x"]["labels"]["final"]["info"]
report["label_versions"] = final["versions"]
downloaded = client().download_label("patient_x", "final")
report["downloaded_label_is_latest"] = bool(
    np.array_equal(np.asarray(nib.load(downloaded).dataobj), versions[-1])
)

# The image as the server gives it back (what Slicer loads): the same four channels, in order.
import urllib.request  # noqa: E402

def download_image(image_id):
    request = urllib.request.Request(
        f"{url}/datastore/image?image={image_id}", headers={"Authorization": f"Bearer {token}"}
    )
    path = os.path.join(work, f"back-{image_id}.nii.gz")
    with urllib.request.urlopen(request) as response, open(path, "wb") as out:
        out.write(response.read())
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def same_channels(returned):
    return bool(
        returned.shape == channels[0].shape + (4,)
        and all(np.array_equal(returned[..., c], channels[c]) for c in range(4))
    )


# Stored as sent for the 4-D upload; stacked by the server for the study of four files.
report["downloaded_image_matches"] = same_channels(download_image("patient_x"))
report["stacked_image_matches"] = same_channels(download_image(web_image))

# Training mapped onto a job: a long run of the model's configuration, seen running, then stopped.
import time  # noqa: E402

task = client().train_start(model, {"epochs": 50, "device": "cpu"})
expect(task["status"] == "RUNNING" and task["request"]["options"]["epochs"] == 50, task)
expect(client().train_status(check_if_running=True), "no training reported running")
client().train_stop()
deadline = time.time() + 60
while client().train_status()["status"] == "RUNNING" and time.time() < deadline:
    time.sleep(0.2)
final_task = client().train_status()
report["train_task"] = {"id": final_task["id"], "status": final_task["status"], "first": task["id"]}
expect(not client().train_status(check_if_running=True), "training still reported running")
logs = urllib.request.urlopen(
    urllib.request.Request(f"{url}/logs/", headers={"Authorization": f"Bearer {token}"})
).read().decode()
report["logs_name_the_job"] = logs.startswith(f"== job {task['id']} ")

for key in ["datastore_label", "session_label", "web_study_label"]:
    expect(report[key]["differing_voxels"] == 0, f"{key} differs from cggm infer: {report}")
print(json.dumps(report))
