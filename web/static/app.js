// CGGM Studio front end: forms through the JSON API, live uPlot charts fed by Server-Sent Events,
// and the slice viewer. No build step; uPlot comes from npm (web/node_modules, served at /vendor).
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

function toast(text, isError) {
  const t = $("#toast");
  t.textContent = text;
  t.className = isError ? "error" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
}

// Every mutating call carries the token when the server asks for one (non-loopback deployments).
async function api(method, url, body) {
  const headers = {};
  const token = localStorage.getItem("cggm_token");
  if (token) headers["Authorization"] = "Bearer " + token;
  let payload = body;
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(url, { method, headers, body: payload });
  if (response.status === 401) {
    const entered = prompt("This server requires a token for changes. Token:");
    if (entered) { localStorage.setItem("cggm_token", entered); return api(method, url, body); }
  }
  const text = await response.text();
  let data = null;
  try { data = JSON.parse(text); } catch (_) { data = text; }
  if (!response.ok) throw new Error((data && data.error) || response.statusText);
  return data;
}

function formJson(form) {
  const out = {};
  for (const [key, value] of new FormData(form).entries()) {
    if (value === "") continue;
    const input = form.elements[key];
    const numeric = input && (input.type === "number" || key.endsWith("_id"));
    out[key] = numeric ? Number(value) : value;
  }
  return out;
}

function onSubmit(selector, handler) {
  for (const form of $$(selector)) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const button = $("button", form);
      if (button) button.disabled = true;
      try { await handler(form); } catch (err) { toast(err.message, true); }
      finally { if (button) button.disabled = false; }
    });
  }
}

// ---------------------------------------------------------------- forms
onSubmit("#new-run", async (form) => {
  const job = await api("POST", "/api/jobs", formJson(form));
  location.href = "/jobs/" + job.id;
});
onSubmit("#register-dataset", async (form) => {
  await api("POST", "/api/datasets", formJson(form));
  location.reload();
});
onSubmit("#create-dataset", async (form) => {
  await api("POST", "/api/datasets", formJson(form));
  location.reload();
});
onSubmit(".upload-case", async (form) => {
  await api("POST", `/api/datasets/${form.dataset.dataset}/cases`, new FormData(form));
  location.reload();
});
onSubmit("#upload-study", async (form) => {
  const study = await api("POST", "/api/studies", new FormData(form));
  toast(`Study #${study.id} uploaded`);
  setTimeout(() => location.reload(), 500);
});
onSubmit("#predict", async (form) => {
  const job = await api("POST", "/api/predictions", formJson(form));
  location.href = "/predictions/" + job.id;
});
// Deletion always asks first; the server refuses (409) what a running job uses.
for (const b of $$("[data-delete]")) {
  b.addEventListener("click", async () => {
    if (!confirm(b.dataset.confirm || "Delete? This cannot be undone.")) return;
    try { await api("DELETE", b.dataset.delete); location.href = b.dataset.then || "/"; }
    catch (err) { toast(err.message, true); }
  });
}
for (const b of $$("[data-revalidate]")) {
  b.addEventListener("click", async () => {
    try {
      // The full check runs in the background: wait for it, then show the new report.
      const url = `/api/datasets/${b.dataset.revalidate}`;
      let d = await api("POST", url + "/validate");
      b.disabled = true;
      toast("Validating every case…");
      while (d.validating) { await new Promise((r) => setTimeout(r, 1000)); d = await api("GET", url); }
      location.reload();
    }
    catch (err) { toast(err.message, true); }
  });
}
const compareLink = $("#compare-link");
if (compareLink) {
  compareLink.addEventListener("click", (e) => {
    const ids = $$(".compare-pick:checked").map((c) => c.value);
    if (ids.length) { e.preventDefault(); location.href = "/compare?jobs=" + ids.join(","); }
  });
}
const checkpointParam = new URLSearchParams(location.search).get("checkpoint");
if (checkpointParam && $("#predict")) $("#predict").elements.checkpoint_job_id.value = checkpointParam;

// ---------------------------------------------------------------- charts
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const MODALITIES = ["flair", "t1ce", "t1", "t2"];

function formatTick(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 1e4 || a < 1e-3 ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}

// One chart: x values and named series, appended to as events arrive.
class Chart {
  constructor(container, title, xLabel, names) {
    this.names = names;
    this.x = [];
    this.ys = names.map(() => []);
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.title = title;
    container.appendChild(box);
    this.box = box;
    const width = Math.max(320, Math.min(560, container.clientWidth / 2 - 16));
    this.plot = new uPlot({
      title, width, height: 220,
      scales: { x: { time: false } },
      axes: [
        { label: xLabel, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000] },
        { size: 60, values: (u, ticks) => ticks.map(formatTick) },
      ],
      series: [{ label: xLabel }].concat(names.map((n, i) => ({ label: n, stroke: COLOURS[i % COLOURS.length], width: 1.5, points: { show: true, size: 4 } }))),
    }, [this.x].concat(this.ys), box);
    this.dirty = false;
  }
  push(x, values) {
    this.x.push(x);
    this.names.forEach((n, i) => this.ys[i].push(values[n] === undefined ? null : values[n]));
    this.dirty = true;
  }
  flush() {
    if (!this.dirty) return;
    this.plot.setData([this.x].concat(this.ys));
    this.box.dataset.points = String(this.x.length);
    this.dirty = false;
  }
}

// The charts of one run (or the overlay of several: series named "#id name").
class RunCharts {
  constructor(container, runIds) {
    this.container = container;
    this.runIds = runIds;
    const prefixed = (names) => runIds.length > 1 ? runIds.flatMap((id) => names.map((n) => `#${id} ${n}`)) : names;
    this.charts = {
      loss: new Chart(container, "Training loss", "step", prefixed(["loss", "task", "gm"])),
      lr: new Chart(container, "Learning rate", "step", prefixed(["lr"])),
      dice: new Chart(container, "Validation Dice", "epoch", prefixed(["WT", "TC", "ET", "mean"])),
      modDice: new Chart(container, "Per-modality classifier Dice (validation)", "epoch", prefixed(MODALITIES)),
      modMetric: new Chart(container, "Per-modality classifier Dice (batch)", "step", prefixed(MODALITIES)),
      balance: new Chart(container, "Balance coefficients B_i", "step", prefixed(MODALITIES)),
      cosine: new Chart(container, "Gradient cosine cos(g_F, g_i)", "step", prefixed(MODALITIES)),
    };
    setInterval(() => this.flush(), 250);
  }
  name(run, n) { return this.runIds.length > 1 ? `#${run} ${n}` : n; }
  values(run, obj, rename) {
    const out = {};
    for (const [k, v] of Object.entries(obj || {})) out[this.name(run, rename ? rename(k) : k)] = v;
    return out;
  }
  add(run, e) {
    const c = this.charts;
    if (e.event === "step") {
      const x = e.step;
      c.loss.push(x, this.values(run, { loss: e.loss, task: e.task_loss, gm: e.gm_loss }));
      c.lr.push(x, this.values(run, { lr: e.lr }));
      c.modMetric.push(x, this.values(run, e.modality_metric));
      c.balance.push(x, this.values(run, e.balance));
      c.cosine.push(x, this.values(run, e.cosine));
    } else if (e.event === "validation") {
      c.dice.push(e.epoch, this.values(run, { WT: e.dice.wt, TC: e.dice.tc, ET: e.dice.et, mean: e.dice.mean }));
      const mods = {};
      for (const [m, s] of Object.entries(e.modality_dice || {})) mods[m] = s.mean;
      c.modDice.push(e.epoch, this.values(run, mods));
    }
  }
  flush() { Object.values(this.charts).forEach((c) => c.flush()); }
}

function setState(state, error) {
  const el = $("#job-state");
  if (el) { el.textContent = state; el.className = "state state-" + state; }
  if (error !== undefined && $("#job-error")) $("#job-error").textContent = error || "";
  const cancel = $("#cancel-job");
  if (cancel) cancel.hidden = !(state === "queued" || state === "running");
  const resume = $("#resume-job");
  if (resume) resume.hidden = !["interrupted", "failed", "cancelled"].includes(state);
}

function setProgress(fraction) {
  const bar = $("#progress-bar");
  if (bar) bar.style.width = Math.round(Math.max(0, Math.min(1, fraction)) * 100) + "%";
}

// Job page: history then live updates, from one EventSource.
const chartsBox = $("#charts");
if (chartsBox) {
  const id = Number(chartsBox.dataset.job);
  const charts = new RunCharts(chartsBox, [id]);
  let steps = 0, validations = 0, best = null, totalSteps = 0;
  const source = new EventSource(`/api/jobs/${id}/stream`);
  const handle = (kind, fn) => source.addEventListener(kind, (m) => fn(JSON.parse(m.data)));
  handle("run_started", (e) => { totalSteps = e.total_steps; });
  handle("step", (e) => {
    charts.add(id, e);
    steps += 1;
    $("#step-count").textContent = steps;
    $("#epoch").textContent = e.epoch;
    if (totalSteps) setProgress((e.step + 1) / totalSteps);
  });
  handle("validation", (e) => {
    charts.add(id, e);
    validations += 1;
    $("#val-count").textContent = validations;
    if (best === null || e.dice.mean > best) { best = e.dice.mean; $("#best-dice").textContent = best.toFixed(3); }
  });
  handle("finished", () => setProgress(1));
  handle("failed", (e) => { $("#job-error").textContent = e.reason; });
  handle("state", (e) => {
    setState(e.state, e.error);
    if (!["queued", "running"].includes(e.state)) { source.close(); refreshLog(id); }
  });
  refreshLog(id);
  $("#cancel-job").addEventListener("click", async () => {
    try { await api("POST", `/api/jobs/${id}/cancel`); toast("Cancelling…"); } catch (err) { toast(err.message, true); }
  });
  $("#resume-job").addEventListener("click", async () => {
    try { await api("POST", `/api/jobs/${id}/resume`); location.reload(); } catch (err) { toast(err.message, true); }
  });
  $("#overlay-go").addEventListener("click", () => {
    const ids = [id].concat($$("#overlay-pick option:checked").map((o) => o.value));
    location.href = "/compare?jobs=" + ids.join(",");
  });
}

async function refreshLog(id) {
  const log = $("#log");
  if (!log) return;
  try { const r = await fetch(`/api/jobs/${id}/log`); log.textContent = (await r.text()).split("\n").slice(-200).join("\n"); } catch (_) {}
}

// Overlay of several runs (stored events; one fetch per run).
const compareBox = $("#compare-charts");
if (compareBox) {
  const ids = compareBox.dataset.jobs.split(",").filter(Boolean).map(Number);
  onSubmit("#compare-form", async (form) => {
    const picked = $$("option:checked", form).map((o) => o.value);
    location.href = "/compare?jobs=" + picked.join(",");
  });
  if (ids.length) {
    const charts = new RunCharts(compareBox, ids);
    Promise.all(ids.map((id) => api("GET", `/api/jobs/${id}/events`).then((events) => events.forEach((e) => charts.add(id, e)))))
      .then(() => charts.flush())
      .catch((err) => toast(err.message, true));
  }
}

// ---------------------------------------------------------------- viewer
const viewer = $("#viewer");
if (viewer) {
  const id = viewer.dataset.prediction;
  const study = viewer.dataset.study;
  const shape = viewer.dataset.shape.split(",").map(Number);
  const plane = $("#plane"), slice = $("#slice"), modality = $("#modality"), opacity = $("#opacity");
  const bg = $("#bg"), overlay = $("#overlay");
  let ready = viewer.dataset.state === "succeeded";
  const depth = () => ({ axial: shape[2], coronal: shape[1], sagittal: shape[0] })[plane.value];
  function labels() { return $$(".label-toggle:checked").map((c) => c.value).join(","); }
  function render() {
    const i = Number(slice.value);
    $("#slice-label").textContent = `${i + 1} / ${depth()}`;
    viewer.dataset.slice = String(i);
    bg.src = `/api/studies/${study}/slice?plane=${plane.value}&index=${i}&modality=${modality.value}`;
    overlay.hidden = !ready;
    if (ready) overlay.src = `/api/predictions/${id}/slice?plane=${plane.value}&index=${i}&labels=${labels() || "0"}`;
    overlay.style.opacity = Number(opacity.value) / 100;
  }
  function resetPlane() { slice.max = depth() - 1; slice.value = Math.floor(depth() / 2); render(); }
  function step(delta) { slice.value = Math.max(0, Math.min(depth() - 1, Number(slice.value) + delta)); render(); }
  plane.addEventListener("change", resetPlane);
  [slice, modality, opacity].forEach((el) => el.addEventListener("input", render));
  $$(".label-toggle").forEach((el) => el.addEventListener("change", render));
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "range") return;
    const moves = { ArrowUp: 1, ArrowRight: 1, k: 1, ArrowDown: -1, ArrowLeft: -1, j: -1, PageUp: 10, PageDown: -10 };
    if (e.key in moves) { e.preventDefault(); step(moves[e.key]); }
  });
  async function showResult() {
    const p = await api("GET", `/api/predictions/${id}`);
    setState(p.state, p.error);
    if (p.volumes) {
      const v = p.volumes;
      const rows = [["Whole tumour (WT)", v.wt_ml], ["Tumour core (TC)", v.tc_ml], ["Enhancing tumour (ET)", v.et_ml], ["Necrotic core (1)", v.ncr_ml], ["Oedema (2)", v.ed_ml]];
      $("#volumes tbody").innerHTML = rows.map(([n, ml]) => `<tr><td>${n}</td><td>${ml.toFixed(2)}</td></tr>`).join("");
      const link = $("#download");
      link.href = p.seg_url; link.hidden = false; link.setAttribute("download", "");
    }
    ready = p.state === "succeeded";
    if (!["queued", "running"].includes(p.state)) setProgress(1);
    render();
  }
  resetPlane();
  showResult();
  if (!["succeeded", "failed", "cancelled", "interrupted"].includes(viewer.dataset.state)) {
    const source = new EventSource(`/api/jobs/${id}/stream`);
    source.addEventListener("progress", (m) => setProgress(JSON.parse(m.data).fraction));
    source.addEventListener("failed", (m) => { $("#job-error").textContent = JSON.parse(m.data).reason; });
    source.addEventListener("state", (m) => {
      const e = JSON.parse(m.data);
      setState(e.state, e.error);
      if (!["queued", "running"].includes(e.state)) { source.close(); setProgress(1); showResult(); }
    });
  }
}
