// The PACS page: search the PACS's studies (QIDO-RS through /api/pacs), list a study's series
// with the modality each is taken for, let the user correct the mapping, and import the study.
"use strict";

let pacsStudy = null;

// DICOM dates are YYYYMMDD.
function dicomDate(text) {
  return /^\d{8}$/.test(text || "") ? `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6)}` : text || "";
}

async function pacsSearch(form) {
  const params = new URLSearchParams();
  for (const [key, value] of new FormData(form).entries()) {
    if (String(value).trim()) params.set(key, String(value).trim());
  }
  const studies = await api("GET", "/api/pacs/studies?" + params);
  const body = $("#pacs-studies tbody");
  body.replaceChildren();
  for (const study of studies) {
    const open = el("button", { type: "button", class: "pacs-open" }, "Series…");
    open.addEventListener("click", () => pacsOpen(study).catch((e) => toast(e.message, true)));
    body.appendChild(el("tr", { dataset: { uid: study.study_uid } },
      el("td", {}, study.patient_name),
      el("td", {}, study.patient_id),
      el("td", {}, dicomDate(study.date)),
      el("td", {}, study.description),
      el("td", {}, (study.modalities || []).join(", ")),
      el("td", { class: "n" }, study.series_count ?? ""),
      el("td", {}, open)));
  }
  $("#pacs-empty").hidden = studies.length > 0;
}

async function pacsOpen(study) {
  const series = await api("GET", `/api/pacs/studies/${encodeURIComponent(study.study_uid)}/series`);
  pacsStudy = study;
  $("#pacs-study-title").textContent = `${study.patient_name || study.patient_id || study.study_uid} ${dicomDate(study.date)}`;
  $("#pacs-import-name").value = study.patient_name || study.patient_id || "PACS import";
  const body = $("#pacs-series tbody");
  body.replaceChildren();
  for (const s of series) {
    body.appendChild(el("tr", { dataset: { uid: s.series_uid } },
      el("td", { class: "n" }, s.number ?? ""),
      el("td", {}, s.description),
      el("td", {}, s.modality),
      el("td", { class: "n" }, s.instances ?? "")));
  }
  for (const select of $$("#pacs-mapping select")) {
    const modality = select.dataset.modality;
    select.replaceChildren(el("option", { value: "" }, "— choose a series —"),
      ...series.map((s) => el("option", { value: s.series_uid, selected: s.guess === modality },
        `#${s.number ?? "?"} ${s.description || "(no description)"} · ${s.modality}`)));
  }
  $("#pacs-imported").hidden = true;
  $("#pacs-study").hidden = false;
}

if ($("#pacs-search")) {
  onSubmit("#pacs-search", pacsSearch);
  pacsSearch($("#pacs-search")).catch((e) => toast(e.message, true));
}

onSubmit("#pacs-import", async () => {
  if (!pacsStudy) return;
  const series = {};
  for (const select of $$("#pacs-mapping select")) {
    if (select.value) series[select.dataset.modality] = select.value;
  }
  const name = $("#pacs-import-name").value.trim();
  toast("Retrieving and converting the four series…");
  const answer = await api("POST", `/api/pacs/studies/${encodeURIComponent(pacsStudy.study_uid)}/import`,
    name ? { series, name } : { series });
  const link = $("#pacs-imported-link");
  link.href = `/segment?study=${answer.study_id}`;
  link.textContent = `study #${answer.study_id} ${answer.study.name}`;
  $("#pacs-imported").hidden = false;
  toast(`Study #${answer.study_id} imported from the PACS`);
});

for (const button of $$(".pacs-send")) {
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      toast("Writing the DICOM SEG and sending it…");
      const sent = await api("POST", `/api/predictions/${button.dataset.prediction}/pacs`);
      button.parentNode.querySelector(".pacs-sent").textContent = `stored as ${sent.sop_instance_uid}`;
      toast("Segmentation stored at the PACS");
    } catch (err) { toast(err.message, true); } finally { button.disabled = false; }
  });
}
