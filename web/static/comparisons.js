// Studies — method comparisons: the launch form (/comparisons) and the aggregate page
// (/comparisons/<id>), which refreshes until every run has finished. Requests go through app.js's
// api(); tables are built with dom.js's el() (text, never HTML).
"use strict";

(function () {
  const COLOURS = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb", "#000000"];
  const list = (text) => (text || "").split(",").map((s) => s.trim()).filter(Boolean);
  const fmt = (i) => !i ? "–" : i.half == null ? i.mean.toFixed(4) : i.mean.toFixed(4) + " ± " + i.half.toFixed(4);

  // A metric key in the user's words: dice_wt -> "Dice WT", hd95_mean -> "HD95 mean (mm)",
  // lesion_dice_tc -> "lesion-wise Dice TC", acc2 -> "Acc-2"; unknown words stay as they are.
  const WORDS = { dice: "Dice", hd95: "HD95", lesion: "lesion-wise", wt: "WT", tc: "TC", et: "ET",
    mae: "MAE", corr: "Corr", acc2: "Acc-2", f1: "F1", auc: "AUC" };
  const metricLabel = (key) => {
    const text = key.split("_").map((w) => WORDS[w] || w).join(" ");
    return key.startsWith("hd95") ? text + " (mm)" : text;
  };
  const metricColumn = (key) => ({ key, text: metricLabel(key) });

  function table(target, header, rows) {
    target.replaceChildren();
    const head = target.createTHead().insertRow();
    // A metric's column reads in words ("HD95 WT (mm)"), its key stays in data-metric (the CSV's).
    header.forEach((h) => head.appendChild(typeof h === "object"
      ? el("th", { dataset: { metric: h.key }, title: h.key }, h.text) : el("th", {}, h)));
    const body = target.createTBody();
    rows.forEach((cells) => {
      const tr = body.insertRow();
      cells.forEach((c) => {
        const td = tr.insertCell();
        if (c instanceof Node) td.appendChild(c); else td.textContent = c;
      });
    });
  }

  function swatch(k, text) {
    return el("span", {}, el("span", { class: "swatch", style: { background: COLOURS[k % COLOURS.length] } }), text);
  }

  // The method and preset pickers, from the trainer's vocabulary and fitting the chosen dataset's
  // task and modalities (a choice is kept while it still fits).
  function fillPickers(form, vocab) {
    const f = form.elements;
    const chosen = f.dataset_id.selectedOptions[0];
    const task = chosen ? chosen.dataset.task : "segmentation";
    const modalities = chosen ? (chosen.dataset.modalities || "").split(",").filter(Boolean) : [];
    const box = document.querySelector("#methods-pick");
    const picked = new Set(Array.from(box.querySelectorAll("input:checked")).map((i) => i.value));
    if (box.dataset.filled !== "1") ["joint", "cggm"].forEach((m) => picked.add(m));
    // joint first: the baseline the paired differences are taken against.
    const names = vocab.methods.filter((m) => (m.tasks || [task]).includes(task)).map((m) => m.name)
      .sort((a, b) => (b === "joint") - (a === "joint"))
      .concat(modalities.map((m) => vocab.unimodal_prefix + m));
    box.querySelectorAll("label").forEach((l) => l.remove());
    for (const name of names) {
      const input = el("input", { type: "checkbox", class: "method-pick", value: name, checked: picked.has(name) });
      box.appendChild(el("label", { class: "pick" }, input, " ", name));
    }
    box.dataset.filled = "1";
    const keep = f.preset.value;
    const presets = vocab.presets.filter((p) => (p.tasks || [p.task]).includes(task));
    f.preset.replaceChildren(el("option", { value: "" }, "the task's default (" + (presets.some((p) => p.name === vocab.default_preset) ? vocab.default_preset : presets.length ? presets[0].name : "none") + ")"),
      ...presets.map((p) => el("option", { value: p.name, title: p.description }, p.name + " (" + p.hardware + ")")));
    if (presets.some((p) => p.name === keep)) f.preset.value = keep;
    const describe = () => {
      const p = vocab.presets.find((x) => x.name === f.preset.value);
      document.querySelector("#study-preset-description").textContent = p ? p.description : "";
    };
    f.preset.onchange = describe;
    describe();
  }

  const form = document.querySelector("#new-comparison");
  if (form) {
    api("GET", "/api/vocabulary").then((vocab) => {
      fillPickers(form, vocab);
      form.elements.dataset_id.addEventListener("change", () => fillPickers(form, vocab));
      form.dataset.ready = "1";
    }).catch((err) => toast(err.message, true));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const f = form.elements;
      const options = {};
      for (const key of ["preset", "device"]) if (f[key].value) options[key] = f[key].value;
      for (const key of ["epochs", "steps_per_epoch"]) if (f[key].value) options[key] = Number(f[key].value);
      const body = {
        name: f.name.value, dataset_id: Number(f.dataset_id.value),
        methods: Array.from(form.querySelectorAll("#methods-pick input:checked")).map((i) => i.value),
        seeds: list(f.seeds.value).map(Number), rho: list(f.rho.value).map(Number),
        lambda: list(f.lambda.value).map(Number), options,
      };
      try {
        const made = await api("POST", "/api/comparisons", body);
        location.href = "/comparisons/" + made.id;
      } catch (err) { toast(err.message, true); }
    });
  }

  const progress = document.querySelector("#comparison-progress");
  if (!progress) return;
  const id = progress.dataset.comparison;
  async function refresh() {
    let a;
    try { a = await api("GET", "/api/comparisons/" + id); } catch (err) { toast(err.message, true); return; }
    await jobStatesLoaded; // app.js: the vocabulary's job states
    const finished = a.runs.filter((r) => isTerminal(r.state)).length;
    progress.textContent = finished + " of " + a.runs.length + " runs finished" + (a.done ? "" : " (refreshing)");
    const warnings = document.querySelector("#comparison-warnings");
    warnings.replaceChildren(...(a.warnings || []).map((w) => el("p", { class: "notice" }, w)));
    table(document.querySelector("#comparison-summary"), ["method", "runs with a test score"].concat(a.metrics.map(metricColumn)),
      a.arms.map((arm, k) => [swatch(k, arm.arm), arm.finished + " / " + arm.runs].concat(a.metrics.map((m) => fmt(arm.metrics[m])))));
    table(document.querySelector("#comparison-paired"), ["method", "metric", "Δ vs joint", "above joint on"],
      a.paired.map((p) => [p.arm, metricLabel(p.metric), fmt(p.interval), p.above + " of " + p.interval.n + " seeds"]));
    // One row per method and metric, one column per modality (not one row per triple).
    const modalities = [...new Set(a.modality.map((m) => m.modality))];
    const pairs = [];
    for (const m of a.modality) if (!pairs.some(([arm, metric]) => arm === m.arm && metric === m.metric)) pairs.push([m.arm, m.metric]);
    table(document.querySelector("#comparison-modality"), ["method", "metric"].concat(modalities),
      pairs.map(([arm, metric]) => [arm, metricLabel(metric)].concat(modalities.map((mod) => {
        const hit = a.modality.find((m) => m.arm === arm && m.metric === metric && m.modality === mod);
        return hit ? fmt(hit.interval) : "–";
      }))));
    table(document.querySelector("#comparison-runs"), ["run", "method", "seed", "state"].concat(a.headline ? [a.headline] : []),
      a.runs.map((r) => {
        const link = document.createElement("a");
        link.href = "/jobs/" + r.job_id; link.textContent = "#" + r.job_id;
        const cells = [link, r.arm, String(r.seed), r.state];
        if (a.headline) cells.push(r.test_metrics[a.headline] == null ? "–" : r.test_metrics[a.headline].toFixed(4));
        return cells;
      }));
    document.querySelector("#figure-metric").textContent = a.headline ? "(" + a.headline + ", in the table's colours)" : "";
    const figure = document.querySelector("#comparison-figure");
    const src = "/api/comparisons/" + id + "/svg?t=" + finished;
    if (figure.getAttribute("src") !== src) figure.src = src;
    if (!a.done) setTimeout(refresh, 3000);
  }
  // The figure as a PNG with its text: the browser rasterises the SVG at twice its size.
  window.comparisonFigurePng = async function () {
    const img = new Image();
    img.src = document.querySelector("#comparison-figure").src;
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth * 2; canvas.height = img.naturalHeight * 2;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    return canvas.toDataURL("image/png");
  };
  document.querySelector("#download-png").addEventListener("click", async () => {
    try {
      const link = document.createElement("a");
      link.href = await window.comparisonFigurePng();
      link.download = "comparison-" + id + ".png";
      link.click();
    } catch (err) { toast("The figure could not be made into a PNG: " + err.message, true); }
  });
  window.addEventListener("DOMContentLoaded", refresh);
})();
