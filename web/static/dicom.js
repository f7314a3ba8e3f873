// DICOM import on the Segment page: one series per modality, sent as a zip or as a folder's files.
"use strict";

onSubmit("#import-dicom", async (form) => {
  toast("Converting the DICOM series…");
  const study = await api("POST", "/api/studies/dicom", new FormData(form));
  toast(`Study #${study.id} imported from DICOM`);
  setTimeout(() => location.reload(), 500);
});

const dicomFolders = $("#dicom-folders");
if (dicomFolders) {
  dicomFolders.addEventListener("change", () => {
    for (const input of $$("#import-dicom input[type=file]")) input.webkitdirectory = dicomFolders.checked;
  });
}
