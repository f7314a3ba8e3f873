// The NiiVue viewer (WebGL) for studies, predictions, dataset cases and a run's test cases: the
// four modalities and the label overlays loaded as NIfTI from the API, multiplanar and 3-D views,
// per-class toggles in the BraTS colours, crosshair readout, window/level, and the scores of the
// prediction against the ground truth, and on a study's page an "Edit label" mode (NiiVue's
// drawing tools) that saves the corrected label as the study's ground truth. The page's manifest
// (GET data-manifest) says what to load.
// Without WebGL 2, or for a volume too large for the browser, the server-rendered slices stay.
// Requests for JSON go through app.js's `api`; NiiVue fetches the volumes itself.
"use strict";

(function () {
  const panel = document.querySelector("#nv-viewer");
  if (!panel) return;
  const $ = (sel) => document.querySelector(sel);
  const pngViewer = $("#png-viewer");
  const message = $("#viewer-message");

  function say(text) { message.textContent = text; message.hidden = false; }

  function fallback(text, manifest) {
    say(text);
    panel.hidden = true;
    panel.dataset.mode = "png";
    const switcher = $("#viewer-switch");
    if (switcher) switcher.hidden = true;
    if (pngViewer) { pngViewer.hidden = false; return; }
    const box = $("#nv-fallback"), img = $("#nv-thumbnail");
    if (box && img && manifest && manifest.thumbnail_url) { img.src = manifest.thumbnail_url; box.hidden = false; }
  }

  // The largest 3-D texture side this browser's WebGL 2 takes; 0 without WebGL 2.
  function webgl2MaxSide() {
    try {
      const gl = document.createElement("canvas").getContext("webgl2");
      return gl ? gl.getParameter(gl.MAX_3D_TEXTURE_SIZE) : 0;
    } catch (_) { return 0; }
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      if (window.niivue) { resolve(); return; }
      const s = document.createElement("script");
      s.src = src; s.onload = resolve;
      s.onerror = () => reject(new Error("could not load " + src + " (run scripts/setup-web.sh)"));
      document.head.appendChild(s);
    });
  }

  const state = {
    nv: null, manifest: null, modality: null, images: {}, overlays: {},
    shownClasses: new Set(["ncr", "ed", "et"]), opacity: 0.5,
    // With the ground truth on the page, the prediction is drawn as an outline (a toggle).
    predictionOutline: true, counts: new WeakMap(),
    // Edit mode: the overlay the drawing started from (hidden under it), strokes undo can take back.
    editing: null, undoable: 0,
  };

  function overlayOpacity(key) {
    if (state.editing === key) return 0;
    const box = Array.from(document.querySelectorAll("#nv-overlays input")).find((i) => i.value === key);
    return box && !box.checked ? 0 : state.opacity;
  }

  // The prediction's own colours, used when the ground truth is on the page too (the truth keeps
  // the class colours): the two are told apart by colour as well as by the outline.
  const PREDICTION_COLOURS = { ncr: [255, 80, 255], ed: [40, 220, 255], et: [255, 140, 0] };

  // Whether the page holds both a prediction and a ground truth: then they must look different.
  function comparing() { return Boolean(state.overlays.prediction && state.overlays.truth); }

  // An overlay's colour table: its label values in their class colour (the prediction's own
  // colours beside a truth); hidden classes transparent.
  function colourTable(o) {
    const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: ["background"] };
    const own = o.key === "prediction" && comparing();
    for (const [value, cls] of o.values) {
      const c = state.manifest.classes.find((k) => k.class === cls);
      const colour = own && PREDICTION_COLOURS[cls] ? PREDICTION_COLOURS[cls] : c.colour;
      cm.R.push(colour[0]); cm.G.push(colour[1]); cm.B.push(colour[2]);
      cm.A.push(state.shownClasses.has(cls) ? 255 : 0); cm.I.push(value); cm.labels.push(c.name);
    }
    return cm;
  }

  // The boundary of a label volume (file voxel order, dims [nx, ny, nz]): a labelled voxel stays
  // when one of its six neighbours holds another value or lies outside; the inside becomes 0.
  function outline(img, nx, ny, nz) {
    const out = new img.constructor(img.length);
    const plane = nx * ny;
    for (let z = 0; z < nz; z++) {
      for (let y = 0; y < ny; y++) {
        for (let x = 0; x < nx; x++) {
          const i = x + y * nx + z * plane, v = img[i];
          if (v === 0) continue;
          const edge = x === 0 || y === 0 || z === 0 || x === nx - 1 || y === ny - 1 || z === nz - 1
            || img[i - 1] !== v || img[i + 1] !== v || img[i - nx] !== v || img[i + nx] !== v
            || img[i - plane] !== v || img[i + plane] !== v;
          if (edge) out[i] = v;
        }
      }
    }
    return out;
  }
  window.cggmOutline = outline;

  // Puts the prediction's filled or outlined voxels into the volume NiiVue draws (the filled ones
  // are kept aside: editing and the readout use them).
  function drawPrediction() {
    const vol = state.overlays.prediction;
    if (!vol || !vol.img || !vol.hdr) return;
    if (!vol.filledImg) vol.filledImg = vol.img;
    const asOutline = comparing() && state.predictionOutline;
    if (asOutline && !vol.outlineImg) {
      const [, nx, ny, nz] = vol.hdr.dims;
      vol.outlineImg = outline(vol.filledImg, nx, ny, nz);
    }
    vol.img = asOutline ? vol.outlineImg : vol.filledImg;
    // Labelled voxels held and drawn (for tests and measurements), counted once per array.
    const count = (a) => {
      if (!state.counts.has(a)) state.counts.set(a, a.reduce((n, v) => n + (v !== 0 ? 1 : 0), 0));
      return state.counts.get(a);
    };
    panel.dataset.predictionStyle = asOutline ? "outline" : "filled";
    panel.dataset.predictionColours = comparing() ? "own" : "classes";
    panel.dataset.predictionVoxels = String(count(vol.filledImg));
    panel.dataset.predictionDrawn = String(count(vol.img));
    const toggle = $("#nv-pred-outline");
    if (toggle) { toggle.closest("label").hidden = !comparing(); toggle.checked = state.predictionOutline; }
  }

  function applyLabels() {
    const nv = state.nv;
    drawPrediction();
    showLegends();
    for (const o of state.manifest.overlays) {
      const vol = state.overlays[o.key];
      if (!vol) continue;
      vol.setColormapLabel(colourTable(o));
      const index = nv.getVolumeIndexByID(vol.id);
      if (index >= 0) nv.volumes[index].opacity = overlayOpacity(o.key);
    }
    nv.updateGLVolume();
  }

  // The overlay's checkbox label: its title and, beside a truth, how it is drawn.
  function overlayLegend(o) {
    if (!comparing()) return o.title;
    if (o.key === "truth") return `${o.title} (filled, class colours)`;
    if (o.key === "prediction") return `${o.title} (${state.predictionOutline ? "outline" : "filled"}, own colours)`;
    return o.title;
  }

  function className(overlay, value) {
    const pair = overlay.values.find(([v]) => v === Math.round(value));
    if (!pair) return "background";
    const c = state.manifest.classes.find((k) => k.class === pair[1]);
    return c ? c.name : pair[1];
  }

  function readout(location) {
    const vox = location.vox || [];
    panel.dataset.voxel = vox.join(",");
    const parts = [`voxel (${vox.join(", ")})`];
    const bg = state.images[state.modality];
    for (const v of location.values || []) {
      if (bg && v.id === bg.id) parts.push(`${state.modality} ${Number(v.value).toFixed(1)}`);
    }
    for (const o of state.manifest.overlays) {
      const vol = state.overlays[o.key];
      const v = vol && (location.values || []).find((x) => x.id === vol.id);
      if (v) parts.push(`${o.title.toLowerCase()}: ${Math.round(v.value)} ${className(o, v.value)}`);
    }
    $("#nv-readout").textContent = parts.join(" · ");
  }

  function showWindow() {
    const bg = state.images[state.modality];
    if (!bg) return;
    $("#nv-win-min").value = Number(bg.cal_min).toPrecision(4);
    $("#nv-win-max").value = Number(bg.cal_max).toPrecision(4);
  }

  function showScores(scores) {
    if (!scores) return;
    const f = (v, digits) => (Number.isFinite(v) ? v.toFixed(digits) : "–");
    const row = (name, s, digits) => el("tr", {}, el("th", {}, name), ["wt", "tc", "et"].map((r) => el("td", {}, f(s[r], digits))));
    $("#nv-scores tbody").replaceChildren(row("Dice", scores.dice, 3), row("HD95 (mm)", scores.hd95, 1));
    $("#nv-scores").hidden = false;
  }

  const VIEWS = { multiplanar: "sliceTypeMultiplanar", axial: "sliceTypeAxial", coronal: "sliceTypeCoronal", sagittal: "sliceTypeSagittal", render: "sliceTypeRender" };

  // One slice along the normal of the shown plane (axial in the multiplanar view).
  function step(delta) {
    const view = $("#nv-view").value;
    const d = { coronal: [0, delta, 0], sagittal: [delta, 0, 0] }[view] || [0, 0, delta];
    state.nv.moveCrosshairInVox(d[0], d[1], d[2]);
  }

  // Puts the crosshair on the centre of the labelled voxels (ground truth first, else the
  // prediction), so that the three planes cut through the tumour.
  function centreOnLabels() {
    const nv = state.nv;
    const vol = state.overlays.truth || state.overlays.prediction;
    if (!vol || !vol.img || !vol.hdr) return;
    const [, nx, ny] = vol.hdr.dims;
    let sx = 0, sy = 0, sz = 0, n = 0;
    for (let i = 0; i < vol.img.length; i++) {
      if (vol.img[i] > 0) { sx += i % nx; sy += Math.floor(i / nx) % ny; sz += Math.floor(i / (nx * ny)); n++; }
    }
    if (n === 0) return;
    // File voxel -> scanner mm through the file's own affine, then to NiiVue's frame.
    const v = [sx / n, sy / n, sz / n], a = vol.hdr.affine;
    const mm = [0, 1, 2].map((r) => a[r][0] * v[0] + a[r][1] * v[1] + a[r][2] * v[2] + a[r][3]);
    nv.scene.crosshairPos = nv.mm2frac(mm);
    nv.drawScene();
    nv.createOnLocationChange();
  }

  async function useModality(name) {
    const nv = state.nv, source = state.manifest.images.find((i) => i.modality === name);
    if (!source) return;
    const current = state.images[state.modality];
    if (source.frame > 0 || (current && current.url === source.url)) {
      // One 4-D file (MSD): the modality is a frame of it.
      nv.setFrame4D(current.id, source.frame);
      state.images[name] = current;
    } else {
      let img = state.images[name];
      if (!img) {
        img = await niivue.NVImage.loadFromUrl({ url: source.url, name: source.name, colormap: "gray" });
        img.url = source.url;
        state.images[name] = img;
      }
      nv.addVolume(img);
      nv.setVolume(img, 0);
      if (current && current !== img) nv.removeVolume(current);
    }
    state.modality = name;
    panel.dataset.modality = name;
    applyLabels();
    showWindow();
    nv.createOnLocationChange();
  }

  function registerOverlay(o, vol) {
    state.overlays[o.key] = vol;
    const input = el("input", { type: "checkbox", class: "nv-overlay", value: o.key, checked: true });
    input.addEventListener("change", applyLabels);
    $("#nv-overlays").appendChild(el("label", { dataset: { overlay: o.key } }, input, " ", el("span", { class: "nv-overlay-title" }, o.title)));
    showLegends();
  }

  function showLegends() {
    for (const o of state.manifest.overlays) {
      const span = document.querySelector(`#nv-overlays label[data-overlay="${o.key}"] .nv-overlay-title`);
      if (span) span.textContent = overlayLegend(o);
    }
  }

  // Overlays that appeared since the page loaded (a prediction that finished meanwhile).
  async function addOverlays(manifest) {
    for (const o of manifest.overlays) {
      if (state.overlays[o.key]) continue;
      const vol = await niivue.NVImage.loadFromUrl({ url: o.url, name: o.name, opacity: state.opacity });
      registerOverlay(o, vol);
      state.nv.addVolume(vol);
    }
    $("#nv-overlays").hidden = manifest.overlays.length === 0;
    state.manifest = manifest;
    if (manifest.labels && !state.editing) showSources(manifest);
    applyLabels();
  }

  function buildControls(manifest) {
    const select = $("#nv-modality");
    select.replaceChildren(...manifest.images.map((i) => el("option", { value: i.modality }, i.modality)));
    select.addEventListener("change", () => useModality(select.value).catch((e) => toast(e.message, true)));
    for (const c of manifest.classes) {
      const input = el("input", { type: "checkbox", class: "nv-class", value: c.class, checked: true });
      const box = el("label", { class: "lab", style: { color: `rgb(${c.colour.map(Number).join(",")})` } }, input, " ", c.name);
      input.addEventListener("change", (e) => {
        if (e.target.checked) state.shownClasses.add(c.class); else state.shownClasses.delete(c.class);
        applyLabels();
      });
      $("#nv-classes").appendChild(box);
    }
    $("#nv-opacity").addEventListener("input", (e) => { state.opacity = Number(e.target.value) / 100; applyLabels(); });
    $("#nv-pred-outline").addEventListener("change", (e) => { state.predictionOutline = e.target.checked; applyLabels(); });
    $("#nv-view").addEventListener("change", (e) => { state.nv.setSliceType(state.nv[VIEWS[e.target.value]]); });
    for (const id of ["#nv-win-min", "#nv-win-max"]) {
      $(id).addEventListener("change", () => {
        const bg = state.images[state.modality];
        const lo = Number($("#nv-win-min").value), hi = Number($("#nv-win-max").value);
        if (bg && Number.isFinite(lo) && Number.isFinite(hi) && hi > lo) { bg.cal_min = lo; bg.cal_max = hi; state.nv.updateGLVolume(); }
      });
    }
    document.addEventListener("keydown", (e) => {
      if (e.target.tagName === "INPUT" && e.target.type !== "range") return;
      if (e.target.tagName === "SELECT") return;
      const moves = { ArrowUp: 1, k: 1, ArrowDown: -1, j: -1, PageUp: 10, PageDown: -10 };
      if (e.key in moves && $("#nv-view").value !== "render") { e.preventDefault(); step(moves[e.key]); }
    });
  }

  // ------------------------------------------------------------------ edit mode (label correction)
  // NiiVue's drawing layer holds the label being corrected, in NiiVue's RAS-ordered bitmap of the
  // background's grid. Saving writes it back in the image's own voxel order with the image's
  // header (NVImage.saveToUint8Array), so the saved label matches the study's grid voxel for voxel.

  function editSay(text) { const p = $("#nv-edit-status"); p.textContent = text; p.hidden = !text; }
  function editError(text) { const p = $("#nv-edit-error"); p.textContent = text; p.hidden = !text; }

  function penClass(value) {
    const pen = state.manifest.labels.pens.find(([v]) => v === value);
    return pen && state.manifest.classes.find((c) => c.class === pen[1]);
  }

  // The drawing's colours: each pen's value in its class colour, background clear.
  function drawColours() {
    const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: ["background"] };
    for (const [value] of state.manifest.labels.pens) {
      const c = penClass(value);
      cm.R.push(c.colour[0]); cm.G.push(c.colour[1]); cm.B.push(c.colour[2]);
      cm.A.push(255); cm.I.push(value); cm.labels.push(c.name);
    }
    return cm;
  }

  function choosePen() {
    const chosen = document.querySelector("#nv-pens input:checked");
    if (chosen && state.nv) state.nv.setPenValue(Number(chosen.value), $("#nv-pen-fill").checked);
  }

  function showUndo() {
    $("#nv-undo").disabled = state.undoable < 1;
    panel.dataset.undoable = String(state.undoable);
  }

  function buildEditControls(manifest) {
    if (!manifest.labels) return;
    const pens = manifest.labels.pens.map(([value]) => {
      const c = penClass(value);
      return { value, text: `${c.name} (${value})`, colour: `rgb(${c.colour.map(Number).join(",")})` };
    }).concat([{ value: 0, text: "erase (0)", colour: "" }]);
    $("#nv-pens").replaceChildren(...pens.map((p, k) => {
      const input = el("input", { type: "radio", name: "nv-pen", value: p.value, checked: k === 0 });
      input.addEventListener("change", choosePen);
      return el("label", { class: "lab", style: p.colour ? { color: p.colour } : {} }, input, " ", p.text);
    }));
    $("#nv-pen-fill").addEventListener("change", choosePen);
    showSources(manifest);
    $("#nv-edit-start").addEventListener("click", () => { try { startEditing(); } catch (e) { editError(e.message); } });
    $("#nv-edit-leave").addEventListener("click", () => leaveEditing());
    $("#nv-undo").addEventListener("click", () => {
      if (state.undoable < 1) return;
      state.nv.drawUndo();
      state.undoable--;
      showUndo();
    });
    $("#nv-save").addEventListener("click", async () => {
      const button = $("#nv-save");
      button.disabled = true;
      editError("");
      try { await saveDrawing(); } catch (e) { editError("Not saved: " + e.message); } finally { button.disabled = false; }
    });
    $("#nv-edit").hidden = false;
  }

  // What a correction can start from: the prediction or the current ground truth, or nothing.
  function showSources(manifest) {
    const select = $("#nv-edit-source"), keep = select.options.length > 0 ? select.value : null;
    const options = manifest.overlays.map((o) => el("option", { value: o.key }, o.title));
    select.replaceChildren(...options, el("option", { value: "" }, "an empty label"));
    if (Array.from(select.options).some((o) => o.value === keep)) select.value = keep;
  }

  function startEditing() {
    const nv = state.nv, key = $("#nv-edit-source").value;
    editError(""); editSay("");
    nv.setDrawColormap(drawColours());
    nv.setDrawOpacity(Math.min(1, state.opacity + 0.3));
    if (key) {
      const source = state.overlays[key];
      if (!source) throw new Error(`the ${key} overlay is not loaded`);
      // A correction starts from the whole prediction, not from its outline.
      if (source.filledImg) source.img = source.filledImg;
      if (!nv.loadDrawing(source)) throw new Error(`the ${key} label is not on the image's grid`);
    } else {
      nv.createEmptyDrawing();
    }
    nv.setDrawingEnabled(true);
    state.editing = key || null;
    state.undoable = 0;
    // NiiVue reports each finished stroke (mouse up, a filled outline) as "draw".
    nv.onDrawingChanged = (action) => {
      if (action !== "draw") return;
      state.undoable = Math.min(state.undoable + 1, nv.opts.maxDrawUndoBitmaps - 1);
      showUndo();
    };
    choosePen();
    showUndo();
    $("#nv-edit-tools").hidden = false;
    $("#nv-edit-start").hidden = true;
    $("#nv-edit-source").disabled = true;
    panel.dataset.editing = key || "empty";
    applyLabels();
  }

  function leaveEditing() {
    const nv = state.nv;
    nv.onDrawingChanged = () => {};
    nv.setDrawingEnabled(false);
    nv.closeDrawing();
    state.editing = null;
    state.undoable = 0;
    $("#nv-edit-tools").hidden = true;
    $("#nv-edit-start").hidden = false;
    $("#nv-edit-source").disabled = false;
    delete panel.dataset.editing;
    applyLabels();
  }

  // The drawing as a gzipped NIfTI on the study's grid (a File for the labels route).
  async function drawingAsNifti() {
    const nv = state.nv, bitmap = nv.drawBitmap;
    if (!bitmap) throw new Error("there is no drawing: press Edit label first");
    const allowed = [0].concat(state.manifest.labels.pens.map(([v]) => v));
    const bad = bitmap.find((v) => !allowed.includes(v));
    if (bad !== undefined) {
      throw new Error(`the drawing holds the value ${bad}, which is not a label (${allowed.join(", ")}): erase it or undo`);
    }
    const nii = await nv.volumes[0].saveToUint8Array("label.nii", bitmap);
    // A 4-D image (MSD: four modalities in one file) lends a 4-D header: the label is one volume.
    new DataView(nii.buffer, nii.byteOffset, nii.byteLength).setInt16(40, 3, true);
    const gz = await new Response(new Blob([nii]).stream().pipeThrough(new CompressionStream("gzip"))).blob();
    return new File([gz], "label.nii.gz", { type: "application/gzip" });
  }

  async function saveDrawing() {
    const author = $("#nv-author").value.trim();
    if (!author) throw new Error("enter your name as the author");
    const form = new FormData();
    form.append("author", author);
    form.append("label", await drawingAsNifti());
    const saved = await api("POST", state.manifest.labels.save_url, form);
    const history = await api("GET", state.manifest.labels.save_url);
    const version = history.versions.find((v) => v.tag === saved.tag && v.version === saved.version);
    const when = version ? new Date(version.created_at * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "";
    leaveEditing();
    await reloadTruth();
    editSay(`saved as ${saved.tag} v${saved.version} by ${version ? version.author : author}${when ? " at " + when : ""}`);
    panel.dataset.savedVersion = String(saved.version);
  }

  // The ground truth overlay again from the manifest (a saved correction is the new truth).
  async function reloadTruth() {
    const nv = state.nv, manifest = await api("GET", panel.dataset.manifest);
    const old = state.overlays.truth;
    if (old) {
      nv.removeVolume(old);
      delete state.overlays.truth;
      const box = document.querySelector('#nv-overlays label[data-overlay="truth"]');
      if (box) box.remove();
    }
    state.manifest = manifest;
    const o = manifest.overlays.find((x) => x.key === "truth");
    if (o) {
      const vol = await niivue.NVImage.loadFromUrl({ url: o.url, name: o.name, opacity: state.opacity });
      registerOverlay(o, vol);
      nv.addVolume(vol);
      panel.dataset.truthUrl = o.url;
    }
    $("#nv-overlays").hidden = manifest.overlays.length === 0;
    showSources(manifest);
    applyLabels();
    if (manifest.scores_url) api("GET", manifest.scores_url).then(showScores).catch((e) => say(e.message));
  }

  // What the page cost: bytes received (every resource and the page itself) when the first frame
  // with every volume was drawn, and the time from navigation start to that frame.
  function recordFirstFrame() {
    requestAnimationFrame(() => requestAnimationFrame(() => {
      const entries = performance.getEntriesByType("resource").concat(performance.getEntriesByType("navigation"));
      const bytes = entries.reduce((sum, e) => sum + (e.transferSize || 0), 0);
      const volumes = entries.filter((e) => /\/nifti/.test(e.name)).reduce((sum, e) => sum + (e.encodedBodySize || 0), 0);
      panel.dataset.firstFrameMs = String(Math.round(performance.now()));
      panel.dataset.bytes = String(bytes);
      panel.dataset.volumeBytes = String(volumes);
      panel.dataset.ready = "1";
    }));
  }

  // Milliseconds since navigation start at each loading step (data-t-*), for measurements.
  function mark(step) { panel.dataset["t" + step[0].toUpperCase() + step.slice(1)] = String(Math.round(performance.now())); }

  async function start() {
    const manifest = await api("GET", panel.dataset.manifest);
    mark("manifest");
    state.manifest = manifest;
    if (new URLSearchParams(location.search).get("viewer") === "png") {
      fallback("Simple slice viewer (server-rendered). Remove ?viewer=png for the 3-D viewer.", manifest);
      return;
    }
    if (manifest.too_large) { fallback(manifest.too_large, manifest); return; }
    const maxSide = webgl2MaxSide();
    if (!maxSide) { fallback("This browser has no WebGL 2: showing server-rendered slices instead.", manifest); return; }
    if (Math.max(...manifest.shape) > maxSide) {
      fallback(`This volume (${manifest.shape.join("×")}) is larger than this browser's WebGL allows (${maxSide} per side): showing server-rendered slices instead.`, manifest);
      return;
    }
    if (manifest.images.length === 0) { fallback("This case has no image the viewer can show.", manifest); return; }
    await loadScript("/vendor/niivue/niivue.umd.js");
    mark("script");
    if (pngViewer) pngViewer.hidden = true;
    const switcher = $("#viewer-switch");
    if (switcher) switcher.hidden = false;
    panel.hidden = false;
    panel.dataset.mode = "niivue";
    const nv = new niivue.Niivue({
      backColor: [0, 0, 0, 1], show3Dcrosshair: true, dragAndDropEnabled: false,
      crosshairColor: [0.2, 0.6, 1, 1], crosshairWidth: 1, multiplanarShowRender: 0, isColorbar: false, loadingText: "loading…",
    });
    state.nv = nv;
    window.cggmNiivue = nv;
    await nv.attachToCanvas($("#nv-canvas"));
    nv.onLocationChange = readout;
    nv.onIntensityChange = showWindow;
    buildControls(manifest);
    const first = manifest.images[0];
    // Every volume in one call: the scene is uploaded to the GPU once, not once per volume.
    await nv.loadVolumes([{ url: first.url, name: first.name, colormap: "gray", frame4D: first.frame }]
      .concat(manifest.overlays.map((o) => ({ url: o.url, name: o.name, opacity: state.opacity }))));
    mark("volumes");
    state.images[first.modality] = nv.volumes[0];
    nv.volumes[0].url = first.url;
    state.modality = first.modality;
    panel.dataset.modality = first.modality;
    manifest.overlays.forEach((o, k) => registerOverlay(o, nv.volumes[k + 1]));
    $("#nv-overlays").hidden = manifest.overlays.length === 0;
    applyLabels();
    buildEditControls(manifest);
    mark("labels");
    nv.setSliceType(nv.sliceTypeMultiplanar);
    mark("layout");
    centreOnLabels();
    mark("centred");
    showWindow();
    recordFirstFrame();
    if (manifest.scores) showScores(manifest.scores);
    else if (manifest.scores_url) api("GET", manifest.scores_url).then(showScores).catch((e) => say(e.message));
  }

  // A prediction that finishes while the page is open: app.js announces it; load its overlay.
  const viewer = $("#viewer");
  if (viewer) {
    viewer.addEventListener("cggm:result", async () => {
      if (!state.nv || state.overlays.prediction) return;
      try {
        const manifest = await api("GET", panel.dataset.manifest);
        await addOverlays(manifest);
        if (manifest.scores_url) showScores(await api("GET", manifest.scores_url));
      } catch (e) { say(e.message); }
    });
  }

  start().catch((e) => fallback("The 3-D viewer could not start (" + e.message + "): showing server-rendered slices.", state.manifest));
})();
