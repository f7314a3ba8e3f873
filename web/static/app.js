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

// Every mutating call carries the token when the server asks for one (non-loopback deployments),
// and the X-CGGM-Request header the server requires on every change (cross-site forms cannot send it).
async function api(method, url, body) {
  const headers = { "X-CGGM-Request": "1" };
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

// A form's fields as JSON: empty fields are left out (the preset's value holds), numbers and
// flags become JSON numbers and booleans (inputs say how with data-kind or type=number).
function formJson(form) {
  const out = {};
  for (const [key, value] of new FormData(form).entries()) {
    if (value === "") continue;
    const input = form.elements[key];
    const kind = (input && input.dataset && input.dataset.kind) || "";
    const numeric = kind === "number" || kind === "integer" || (input && input.type === "number") || key.endsWith("_id");
    out[key] = kind === "flag" ? value === "true" : numeric ? Number(value) : value;
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

// The new-run form offers what fits the chosen dataset's task: its presets, the methods with its
// own modalities, and each preset's values as placeholders. Everything comes from the trainer's
// vocabulary (GET /api/vocabulary); the choice a person made is kept while it still fits.
const newRun = $("#new-run");
if (newRun) {
  api("GET", "/api/vocabulary").then((vocab) => {
    const f = newRun.elements;
    const fill = (select, values) => {
      const keep = select.value;
      select.replaceChildren(...values.map((v) => el("option", { value: v }, v)));
      if (values.includes(keep)) select.value = keep;
    };
    // The chosen preset's values: as each field's placeholder ("preset: 16" in a list) and, for
    // the options that apply to the task, as one line of numbers under the preset.
    const placeholders = () => {
      const preset = vocab.presets.find((p) => p.name === f.preset.value);
      $("#preset-description").textContent = preset ? preset.description : "";
      const values = [];
      for (const option of vocab.options) {
        const input = f[option.name];
        if (!input || option.name === "method" || option.name === "preset") continue;
        const v = preset && preset.defaults[option.name];
        const shown = v === null || v === undefined ? "" : String(v);
        if (input.tagName === "INPUT") input.placeholder = shown || "not set by the preset";
        else if (input.options.length && input.options[0].value === "") input.options[0].textContent = shown ? "preset: " + shown : "the preset's";
        const box = input.closest("label");
        if (shown && !(box && box.hidden)) values.push(option.label.toLowerCase() + " " + shown);
      }
      $("#preset-values").textContent = values.length ? "This preset: " + values.join(" · ") : "";
      estimate(preset);
    };
    // The run's duration from the preset's measured step time: epochs × steps per epoch × seconds
    // per step. Steps per epoch as entered, else the preset's, else the trainer's rule (every
    // training sample once: its share of the dataset × slices per sample / batch size).
    const estimate = (preset) => {
      const out = $("#duration-estimate");
      if (!preset) { out.textContent = ""; return; }
      if (!preset.cpu_step_seconds) {
        out.textContent = "No measured step time for " + preset.name + " on a CPU, so no duration estimate.";
        return;
      }
      const number = (name) => {
        const entered = Number(f[name] ? f[name].value : "");
        return entered > 0 ? entered : Number(preset.defaults[name]) || 0;
      };
      const epochs = number("epochs"), batch = number("batch_size");
      let steps = number("steps_per_epoch");
      const chosen = f.dataset_id.selectedOptions[0];
      if (!steps && chosen && batch) {
        const train = Math.round(Number(chosen.dataset.samples || 0) * preset.train_fraction);
        steps = Math.max(1, Math.ceil(train * preset.slices_per_sample / batch));
      }
      if (!(epochs > 0 && steps > 0)) { out.textContent = ""; return; }
      const seconds = epochs * steps * preset.cpu_step_seconds;
      out.dataset.seconds = String(seconds);
      out.textContent = "Estimated training time on 2 CPU cores: about " + formatEta(seconds) + " (" + epochs +
        " epochs × " + steps + " steps × " + preset.cpu_step_seconds + " s per step, validation not counted).";
    };
    for (const name of ["epochs", "steps_per_epoch", "batch_size"]) {
      if (f[name]) f[name].addEventListener("input", () => estimate(vocab.presets.find((p) => p.name === f.preset.value)));
    }
    // Options that do not apply to the dataset's task are hidden and not sent.
    const fitOptions = (task) => {
      for (const box of $$("label.run-option", newRun)) {
        const applies = (box.dataset.tasks || "").split(",").includes(task);
        box.hidden = !applies;
        if (!applies) { const input = $("input, select", box); if (input) input.value = ""; }
      }
    };
    // Only finished runs of the dataset's task can start a run on it (init_from).
    const fitSources = (task) => {
      for (const option of f.init_from.options) {
        const other = option.value !== "" && option.dataset.task !== task;
        option.hidden = other; option.disabled = other;
        if (other && option.selected) f.init_from.value = "";
      }
    };
    const fit = () => {
      const chosen = f.dataset_id.selectedOptions[0];
      if (!chosen) return;
      const task = chosen.dataset.task;
      const modalities = (chosen.dataset.modalities || "").split(",").filter(Boolean);
      fill(f.method, vocab.methods.map((m) => m.name).concat(modalities.map((m) => vocab.unimodal_prefix + m)));
      const presets = vocab.presets.filter((p) => (p.tasks || [p.task]).includes(task));
      const fitting = presets.map((p) => p.name);
      const keep = f.preset.value;
      f.preset.replaceChildren(...presets.map((p) =>
        el("option", { value: p.name, title: p.description }, p.name + " (" + p.hardware + ")")));
      if (fitting.includes(keep)) f.preset.value = keep;
      else if (fitting.includes(vocab.default_preset)) f.preset.value = vocab.default_preset;
      fitSources(task);
      fitOptions(task);
      placeholders();
    };
    f.dataset_id.addEventListener("change", fit);
    f.preset.addEventListener("change", placeholders);
    const first = f.dataset_id.selectedOptions[0];
    if (first) { fitSources(first.dataset.task); fitOptions(first.dataset.task); }
    placeholders();
  }).catch((err) => toast(err.message, true));
}
// A run's name, notes and tags, changed on its page (PATCH; the other fields stay as launched).
onSubmit("#run-labels", async (form) => {
  const data = new FormData(form);
  await api("PATCH", `/api/jobs/${form.dataset.job}`, { name: data.get("name"), notes: data.get("notes"), tags: data.get("tags") });
  location.reload();
});

// The filter over a list of runs (dashboard, models): each word must appear in the row's name,
// tags, method, preset, dataset or task (its data-search, lower case); the rest are hidden.
for (const input of $$("input.list-filter")) {
  const rows = $$(`${input.dataset.filter} tbody tr`);
  const count = $(".filter-count", input.closest("p"));
  const apply = () => {
    const words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const row of rows) {
      const text = row.dataset.search || "";
      row.hidden = !words.every((w) => text.includes(w));
      if (!row.hidden) shown++;
    }
    if (count) count.textContent = words.length ? `${shown} of ${rows.length} shown` : "";
  };
  input.addEventListener("input", apply);
  apply();
}

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
// The dashboard's per-modality bars: their widths come as data-width (the Content-Security-Policy
// refuses `style` attributes in the page), set here through the CSSOM.
for (const fill of $$(".bar span[data-width]")) fill.style.width = Number(fill.dataset.width) + "%";
const checkpointParam = new URLSearchParams(location.search).get("checkpoint");
if (checkpointParam && $("#predict")) $("#predict").elements.checkpoint_job_id.value = checkpointParam;
// The PACS page links an imported study here (/segment?study=N).
const studyParam = new URLSearchParams(location.search).get("study");
if (studyParam && $("#predict")) $("#predict").elements.study_id.value = studyParam;

// ---------------------------------------------------------------- charts
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
// Project order of the MRI modalities; a run's `run_started` event names its own order (a
// feature dataset's), which replaces it on that run's page.
const MRI_ORDER = ["flair", "t1ce", "t1", "t2"];
let modalityOrder = MRI_ORDER;

function formatTick(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 1e4 || a < 1e-3 ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}

// A metric's name as people read it (dice_wt -> Dice WT); the events keep the plain names.
function metricLabel(name) {
  const words = { dice: "Dice", f1: "F1", mae: "MAE", wt: "WT", tc: "TC", et: "ET", acc2: "Acc-2", acc7: "Acc-7", corr: "Corr" };
  return name.split("_").map((w) => words[w] || w).join(" ");
}

// A validation event's fused scores by name: `metrics` (every task), or the Dice fields of runs
// recorded before tasks existed.
function fusedScores(e, metricsKey = "metrics", diceKey = "dice") {
  const m = e[metricsKey];
  if (m && Object.keys(m).length) return m;
  const d = e[diceKey];
  if (!d) return {};
  return { dice_wt: d.wt, dice_tc: d.tc, dice_et: d.et, dice_mean: d.mean };
}

// Each modality's classifier scores by name: `modality_metrics`, or the older `modality_dice`.
function modalityScores(e, metricsKey = "modality_metrics", diceKey = "modality_dice") {
  const m = e[metricsKey];
  if (m && Object.keys(m).length) return m;
  const out = {};
  for (const [mod, s] of Object.entries(e[diceKey] || {})) out[mod] = { dice_wt: s.wt, dice_tc: s.tc, dice_et: s.et, dice_mean: s.mean };
  return out;
}

function byModalityOrder(entries) {
  const rank = (k) => { const i = modalityOrder.indexOf(k); return i < 0 ? modalityOrder.length : i; };
  return entries.sort((a, b) => rank(a[0]) - rank(b[0]));
}

// GET /api/vocabulary, fetched once per page.
let vocabularyLoaded = null;
function vocabulary() {
  if (!vocabularyLoaded) vocabularyLoaded = api("GET", "/api/vocabulary");
  return vocabularyLoaded;
}

// The methods that scale encoder gradients by B_i, from the vocabulary (loaded once): only their
// balance guard is news (other methods report B_i they compute but never apply).
let methodsByName = null;
function vocabularyMethods() {
  if (!methodsByName) {
    methodsByName = vocabulary()
      .then((v) => Object.fromEntries((v.methods || []).map((m) => [m.name, m])))
      .catch((err) => { toast(err.message, true); return {}; });
  }
  return methodsByName;
}

// Which job states are terminal (the page stops following the job) and resumable, from the
// vocabulary's job_states: no page retypes the list. Until it loads, and for a state it does not
// know, a job counts as still active (followed, cancellable).
let jobStateFlags = {};
const jobStatesLoaded = vocabulary()
  .then((v) => { jobStateFlags = Object.fromEntries((v.job_states || []).map((s) => [s.name, s])); })
  .catch((err) => toast(err.message, true));
const isTerminal = (state) => Boolean(jobStateFlags[state] && jobStateFlags[state].terminal);
const isResumable = (state) => Boolean(jobStateFlags[state] && jobStateFlags[state].resumable);

// The balance guard's running tally for one run, updated by a step event: steps seen, steps the
// guard set every B_i to neutral on, coefficients pinned at 0 or rho (in total, and on how many
// steps). Only CGGM steps (those that report balance coefficients) count; others give null.
function balanceGuard(tallies, run, e) {
  if (e.balance_guarded === undefined || !Object.keys(e.balance || {}).length) return null;
  const t = tallies[run] || (tallies[run] = { steps: 0, guarded: 0, clamped: 0, clampedSteps: 0 });
  t.steps += 1;
  if (e.balance_guarded) t.guarded += 1;
  t.clamped += e.balance_clamped || 0;
  if (e.balance_clamped) t.clampedSteps += 1;
  return t;
}

// One chart: x values and named series, appended to as events arrive. Series are added when a
// name first appears, so a chart fits whatever the run reports (its task's metrics, its modalities).
class Chart {
  constructor(container, title, xLabel) {
    this.names = [];
    this.x = [];
    this.ys = [];
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
      series: [{ label: xLabel }],
    }, [this.x], box);
    this.dirty = false;
  }
  ensure(name) {
    if (this.names.includes(name)) return;
    const i = this.names.length;
    this.names.push(name);
    this.ys.push(this.x.map(() => null));
    this.plot.addSeries({ label: name, stroke: COLOURS[i % COLOURS.length], width: 1.5, points: { show: true, size: 4 } }, i + 1);
    this.plot.setData([this.x].concat(this.ys));
  }
  push(x, values) {
    for (const n of Object.keys(values)) this.ensure(n);
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

// The charts of one run (or the overlay of several: series named "#id name"). The fused and the
// per-modality validation charts show each task's own metrics; a segmentation run keeps its
// "Validation Dice" titles.
class RunCharts {
  constructor(container, runIds, headline) {
    this.container = container;
    this.runIds = runIds;
    this.headline = headline || "";
    this.charts = {};
    this.guards = {};
    this.chart("loss", "Training loss", "step");
    this.chart("lr", "Learning rate", "step");
    setInterval(() => this.flush(), 250);
  }
  chart(key, title, xLabel) {
    if (!this.charts[key]) this.charts[key] = new Chart(this.container, title, xLabel);
    return this.charts[key];
  }
  name(run, n) { return this.runIds.length > 1 ? `#${run} ${n}` : n; }
  values(run, obj, rename) {
    const out = {};
    for (const [k, v] of byModalityOrder(Object.entries(obj || {}))) {
      if (typeof v === "number") out[this.name(run, rename ? rename(k) : k)] = v;
    }
    return out;
  }
  // The metric the per-modality chart follows: the page's headline when the run reports it.
  pick(scores) {
    const names = Object.keys(scores);
    for (const n of [this.headline, "dice_mean", "accuracy", "acc2"]) if (n && names.includes(n)) return n;
    return names[0];
  }
  add(run, e) {
    if (e.event === "run_started") {
      const method = (this.methods || {})[(e.config || {}).method];
      (this.scalesB || (this.scalesB = {}))[run] = Boolean(method && method.magnitude);
    } else if (e.event === "step") {
      const x = e.step;
      this.chart("loss").push(x, this.values(run, { loss: e.loss, task: e.task_loss, gm: e.gm_loss }));
      this.chart("lr").push(x, this.values(run, { lr: e.lr }));
      this.chart("modMetric", "Per-modality classifier score ε_i (batch)", "step").push(x, this.values(run, e.modality_metric));
      this.chart("balance", "Balance coefficients B_i", "step").push(x, this.values(run, e.balance));
      this.chart("cosine", "Gradient cosine cos(g_F, g_i)", "step").push(x, this.values(run, e.cosine));
      const guard = (this.scalesB || {})[run] === false ? null : balanceGuard(this.guards, run, e);
      if (guard) {
        this.chart("guarded", "Balance guard: share of steps guarded (running)", "step").push(x, { [this.name(run, "guarded")]: guard.guarded / guard.steps });
        this.chart("clamped", "Balance coefficients clamped at 0 or ρ (per step)", "step").push(x, { [this.name(run, "clamped B_i")]: e.balance_clamped || 0 });
      }
      const coefficients = this.values(run, e.baseline_coefficients);
      if (Object.keys(coefficients).length) this.chart("baseline", "Baseline coefficients per modality", "step").push(x, coefficients);
    } else if (e.event === "validation") {
      const fused = fusedScores(e);
      const dice = Object.keys(fused).some((k) => k.startsWith("dice_"));
      this.chart("fused", dice ? "Validation Dice" : "Validation metrics", "epoch").push(e.epoch + 1, this.values(run, fused, metricLabel)); // epochs 1-based, as the CLI counts
      const perModality = modalityScores(e);
      const first = Object.values(perModality)[0];
      if (first) {
        const metric = this.pick(first);
        const mods = {};
        for (const [m, s] of Object.entries(perModality)) mods[m] = s[metric];
        this.chart("modality", `Per-modality classifier ${metricLabel(metric)} (validation)`, "epoch").push(e.epoch + 1, this.values(run, mods));
      }
    }
  }
  flush() { Object.values(this.charts).forEach((c) => c.flush()); }
}

// ---------------------------------------------------------------- test report
// The run's test scores (from its `finished` event), per modality, and from its metrics.json a
// confusion matrix (classification) or a predicted-vs-true scatter plot (regression).
function findKey(obj, key, depth = 0) {
  if (!obj || typeof obj !== "object" || depth > 4) return undefined;
  if (key in obj) return obj[key];
  for (const v of Object.values(obj)) { const found = findKey(v, key, depth + 1); if (found !== undefined) return found; }
  return undefined;
}

function showTestReport(finished, metrics) {
  const box = $("#test-report");
  if (!box) return;
  const scores = fusedScores(finished || {}, "test_metrics", "test_dice");
  const rows = Object.entries(scores).filter(([, v]) => typeof v === "number");
  $("#test-metrics tbody").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("th", {}, metricLabel(k)), el("td", {}, v.toFixed(4)))));
  let perModality = modalityScores(finished || {}, "test_modality_metrics", "test_modality_dice");
  // Feature runs keep each classifier's test scores in metrics.json (`test.modality_metrics`).
  const stored = metrics && metrics.test && metrics.test.modality_metrics;
  if (!Object.keys(perModality).length && stored) perModality = stored;
  const mods = byModalityOrder(Object.entries(perModality));
  if (mods.length) {
    const names = Object.keys(mods[0][1]);
    $("#test-modalities").replaceChildren(el("table", { class: "modality-scores" },
      el("thead", {}, el("tr", {}, el("th", {}, "Modality classifier"), names.map((n) => el("th", {}, metricLabel(n))))),
      el("tbody", {}, mods.map(([m, s]) => el("tr", {}, el("th", {}, m),
        names.map((n) => el("td", {}, typeof s[n] === "number" ? s[n].toFixed(3) : "–")))))));
  }
  // The test split's report (metrics.json `test`, not `best_val`): `classification.confusion` (rows
  // true, columns predicted) or `regression.pairs` as (predicted, true).
  const test = (metrics && metrics.test) || {};
  const classification = test.classification || {};
  const matrix = classification.confusion || findKey(test, "confusion_matrix");
  if (Array.isArray(matrix) && matrix.length) drawConfusion(matrix, classification.class_names || findKey(test, "class_names") || []);
  let pairs = findKey(test, "predictions");
  const predictedTrue = test.regression && test.regression.pairs;
  if (!Array.isArray(pairs) && Array.isArray(predictedTrue)) pairs = predictedTrue.map(([p, t]) => [t, p]);
  if (Array.isArray(pairs) && pairs.length && Array.isArray(pairs[0])) drawScatter(pairs);
  box.hidden = !(rows.length || mods.length || !$("#confusion").hidden || !$("#scatter").hidden);
}

function drawConfusion(matrix, names) {
  const box = $("#confusion");
  const label = (i) => names[i] === undefined ? String(i) : String(names[i]);
  const max = Math.max(1, ...matrix.flat());
  const head = el("tr", {}, el("th", {}, "true \\ predicted"), matrix[0].map((_, j) => el("th", {}, label(j))));
  const body = matrix.map((row, i) => el("tr", {}, el("th", {}, label(i)), row.map((n, j) => {
    const alpha = (Number(n) / max).toFixed(2);
    const colour = i === j ? `rgba(44,160,44,${alpha})` : `rgba(214,39,40,${alpha})`;
    return el("td", { style: { background: colour } }, n);
  })));
  $("table", box).replaceChildren(head, ...body);
  box.hidden = false;
}

function drawScatter(pairs) {
  const box = $("#scatter");
  const canvas = $("canvas", box);
  const ctx = canvas.getContext("2d");
  const values = pairs.flat().filter(Number.isFinite);
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi === lo) { lo -= 1; hi += 1; }
  const pad = 40, w = canvas.width - 2 * pad, h = canvas.height - 2 * pad;
  const px = (v) => pad + ((v - lo) / (hi - lo)) * w;
  const py = (v) => canvas.height - pad - ((v - lo) / (hi - lo)) * h;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#999"; ctx.strokeRect(pad, pad, w, h);
  ctx.beginPath(); ctx.moveTo(px(lo), py(lo)); ctx.lineTo(px(hi), py(hi)); ctx.setLineDash([4, 4]); ctx.stroke(); ctx.setLineDash([]);
  ctx.fillStyle = "rgba(31,119,180,0.6)";
  for (const [truth, predicted] of pairs) { ctx.beginPath(); ctx.arc(px(truth), py(predicted), 2.5, 0, 2 * Math.PI); ctx.fill(); }
  ctx.fillStyle = "#333"; ctx.font = "12px sans-serif";
  ctx.fillText("true →", canvas.width / 2 - 20, canvas.height - 10);
  ctx.save(); ctx.translate(12, canvas.height / 2 + 30); ctx.rotate(-Math.PI / 2); ctx.fillText("predicted →", 0, 0); ctx.restore();
  ctx.fillText(formatTick(lo), pad - 4, canvas.height - pad + 14); ctx.fillText(formatTick(hi), pad + w - 20, canvas.height - pad + 14);
  canvas.dataset.points = String(pairs.length);
  box.hidden = false;
}

async function loadTestReport(id, finished) {
  let metrics = null;
  try { metrics = await api("GET", `/api/jobs/${id}/metrics`); } catch (_) { /* no metrics.json yet */ }
  showTestReport(finished, metrics);
}

function setState(state, error) {
  const badge = $("#job-state");
  if (badge) { badge.textContent = state; badge.className = "state state-" + state; }
  if (error !== undefined && $("#job-error")) $("#job-error").textContent = error || "";
  const cancel = $("#cancel-job");
  if (cancel) cancel.hidden = isTerminal(state);
  const resume = $("#resume-job");
  if (resume) resume.hidden = !isResumable(state);
}

function setProgress(fraction, time) {
  if (window.progressEta) window.progressEta.update(fraction, time);
  const bar = $("#progress-bar");
  if (bar) bar.style.width = Math.round(Math.max(0, Math.min(1, fraction)) * 100) + "%";
}

// A run's stored events after `after`, every page of them (a long run holds more events than one
// page or the stream's replay), oldest first.
const EVENTS_PAGE = 10000;
async function storedEvents(id, after = 0) {
  const all = [];
  for (;;) {
    const page = await api("GET", `/api/jobs/${id}/events?after=${after}&limit=${EVENTS_PAGE}`);
    all.push(...page);
    if (page.length < EVENTS_PAGE) return all;
    after = page[page.length - 1].seq;
  }
}

// Job page: the whole stored history through the paged API, then live updates from an
// EventSource that starts after the last stored event.
const chartsBox = $("#charts");
if (chartsBox) {
  const id = Number(chartsBox.dataset.job);
  const headline = chartsBox.dataset.headline;
  const charts = new RunCharts(chartsBox, [id], headline);
  let steps = 0, validations = 0, best = null, totalSteps = 0, finished = null;
  let source = null;
  const handlers = {};
  const handle = (kind, fn) => { handlers[kind] = fn; };
  // Whether this run's method scales encoder gradients by B_i (the vocabulary says): only then is
  // the balance guard's tally news.
  let scalesB = false;
  handle("run_started", (e) => {
    totalSteps = e.total_steps;
    if (e.modalities && e.modalities.length) modalityOrder = e.modalities;
    charts.add(id, e);
    scalesB = charts.scalesB[id];
  });
  handle("balance_diagnostics", (e) => {
    const box = $("#balance-diagnostics");
    if (box && e.diagnostics && e.diagnostics.summary && scalesB) {
      box.textContent = e.diagnostics.summary;
      box.hidden = false;
    }
  });
  handle("step", (e) => {
    charts.add(id, e);
    const guard = charts.guards[id];
    if (scalesB && guard && guard.steps) {
      $("#guard-stats").hidden = false;
      $("#guard-steps").textContent = guard.guarded;
      $("#guard-total").textContent = guard.steps;
      $("#guard-share").textContent = (100 * guard.guarded / guard.steps).toFixed(1) + "%";
      $("#clamped-count").textContent = guard.clamped;
      $("#clamped-steps").textContent = guard.clampedSteps;
    }
    steps += 1;
    $("#step-count").textContent = steps;
    $("#epoch").textContent = e.epoch + 1; // 1-based, as the CLI counts
    if (totalSteps) setProgress((e.step + 1) / totalSteps, e.time);
  });
  handle("validation", (e) => {
    charts.add(id, e);
    validations += 1;
    $("#val-count").textContent = validations;
    const score = fusedScores(e)[headline];
    if (typeof score === "number" && (best === null || score > best)) { best = score; $("#best-dice").textContent = best.toFixed(3); }
  });
  handle("finished", (e) => { finished = e; setProgress(1); });
  handle("failed", (e) => { $("#job-error").textContent = e.reason; });
  handle("state", (e) => {
    setState(e.state, e.error);
    if (isTerminal(e.state)) {
      source.close(); refreshLog(id); if (finished) loadTestReport(id, finished);
      if (window.progressEta) window.progressEta.hide();
    }
  });
  (async () => {
    let after = 0;
    charts.methods = await vocabularyMethods();
    await jobStatesLoaded;
    try {
      const history = await storedEvents(id);
      history.forEach((e) => { if (handlers[e.event]) handlers[e.event](e); });
      if (history.length) after = history[history.length - 1].seq;
    } catch (err) { toast(err.message, true); }
    source = new EventSource(`/api/jobs/${id}/stream?after=${after}`);
    for (const [kind, fn] of Object.entries(handlers)) source.addEventListener(kind, (m) => fn(JSON.parse(m.data)));
  })();
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
    const charts = new RunCharts(compareBox, ids, compareBox.dataset.headline);
    vocabularyMethods()
      .then((methods) => { charts.methods = methods; })
      .then(() => Promise.all(ids.map((id) => storedEvents(id).then((events) => events.forEach((e) => charts.add(id, e))))))
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
      $("#volumes tbody").replaceChildren(...rows.map(([n, ml]) => el("tr", {}, el("td", {}, n), el("td", {}, ml.toFixed(2)))));
      const link = $("#download");
      link.href = p.seg_url; link.hidden = false; link.setAttribute("download", "");
      // Only a study imported from DICOM has the series a DICOM SEG refers to.
      const dicom = $("#download-dicom-seg");
      if (p.dicom_seg_url) { dicom.href = p.dicom_seg_url; dicom.hidden = false; dicom.setAttribute("download", ""); }
    }
    ready = p.state === "succeeded";
    if (isTerminal(p.state)) setProgress(1);
    render();
    viewer.dispatchEvent(new CustomEvent("cggm:result", { detail: p })); // viewer.js (NiiVue)
  }
  resetPlane();
  jobStatesLoaded.then(() => {
    showResult();
    if (isTerminal(viewer.dataset.state)) return;
    const source = new EventSource(`/api/jobs/${id}/stream`);
    source.addEventListener("progress", (m) => setProgress(JSON.parse(m.data).fraction));
    source.addEventListener("failed", (m) => { $("#job-error").textContent = JSON.parse(m.data).reason; });
    source.addEventListener("state", (m) => {
      const e = JSON.parse(m.data);
      setState(e.state, e.error);
      if (isTerminal(e.state)) { source.close(); setProgress(1); showResult(); }
    });
  });
}
