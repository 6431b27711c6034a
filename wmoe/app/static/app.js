// wmoe app: the page. Scores go to the server once per image (POST /api/score); moving a threshold re-decides
// from the server's cache (POST /api/decide, GET /api/overlay) and never runs the model again.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  results: new Map(),   // id -> the server's view of a result at the thresholds in use
  order: [],            // ids, newest first
  selected: null,
  threshold: null,      // in use (null: none)
  pixelThreshold: null,
  cls: "",
  busy: 0,
  overlayLoading: false,
  decideSeq: 0,
};

function setBusy(delta) {
  state.busy += delta;
  document.body.dataset.busy = state.busy > 0 ? "1" : "0";
}

// run a request with the page marked busy (tests wait for data-busy="0"); a failure becomes a message
async function whileBusy(fn) {
  setBusy(+1);
  try {
    await fn();
  } catch (e) {
    message(e.message);
  } finally {
    setBusy(-1);
  }
}

function message(text, kind) {
  const li = document.createElement("li");
  li.className = kind || "error";
  li.textContent = text;
  $("messages").prepend(li);
  while ($("messages").children.length > 30) $("messages").lastChild.remove();
}

async function api(method, url, body, headers) {
  let resp;
  try {
    resp = await fetch(url, { method, body, headers, cache: "no-store" });
  } catch (e) {
    throw new Error("the app does not answer (is wmoe app still running?)");
  }
  const type = resp.headers.get("Content-Type") || "";
  const doc = type.startsWith("application/json") ? await resp.json() : null;
  if (!resp.ok) throw new Error(doc && doc.error ? doc.error : `${resp.status} ${resp.statusText}`);
  return doc;
}

const fmt = (v, d = 4) => (v === null || v === undefined ? "—" : Number(v).toFixed(d));
// the contract's vocabulary (wmoe.contract.VERDICTS) in capitals, as wmoe.contract.verdict_label prints it
const VERDICT_TEXT = { anomalous: "ANOMALOUS", normal: "NORMAL", undecided: "UNDECIDED" };

// --- thresholds -------------------------------------------------------------------------------------------------

function storedFor(cls) {
  const info = state.info;
  const c = cls && info.classes[cls];
  return c ? { threshold: c.threshold, pixel: c.pixel_threshold }
           : { threshold: info.threshold, pixel: info.pixel_threshold };
}

function thresholdRange() {
  const vals = [];
  for (const r of state.results.values()) vals.push(r.score);
  const s = storedFor(state.cls);
  if (s.threshold !== null) vals.push(s.threshold);
  if (state.threshold !== null) vals.push(state.threshold);
  for (const c of Object.values(state.info.classes)) if (c.threshold !== null) vals.push(c.threshold);
  if (!vals.length) return [0, 2];
  let lo = Math.min(...vals), hi = Math.max(...vals);
  const pad = Math.max(0.1, 0.25 * (hi - lo));
  return [lo - pad, hi + pad];
}

function syncThresholdInputs() {
  const [lo, hi] = thresholdRange();
  const slider = $("threshold");
  slider.min = lo.toFixed(4);
  slider.max = hi.toFixed(4);
  slider.step = ((hi - lo) / 400).toPrecision(3);
  if (state.threshold !== null) {
    slider.value = state.threshold;
    $("threshold-number").value = state.threshold.toFixed(4);
  } else {
    $("threshold-number").value = "";
  }
  const s = storedFor(state.cls);
  $("threshold-note").textContent = s.threshold === null
    ? "the model stores no threshold: move the slider to set one"
    : `stored${state.cls ? " for " + state.cls : ""}: ${fmt(s.threshold)}`;
  const px = $("pixel-threshold");
  if (state.pixelThreshold !== null) {
    px.value = state.pixelThreshold;
    $("pixel-threshold-number").value = state.pixelThreshold.toFixed(4);
  } else {
    $("pixel-threshold-number").value = "";
  }
  $("pixel-threshold-note").textContent = s.pixel === null
    ? "the model stores no pixel threshold: move the slider to outline defects"
    : `stored${state.cls ? " for " + state.cls : ""}: ${fmt(s.pixel)}`;
}

function useStored() {
  const s = storedFor(state.cls);
  state.threshold = s.threshold;
  state.pixelThreshold = s.pixel;
}

function decisionQuery() {
  const q = new URLSearchParams();
  if (state.threshold !== null) q.set("threshold", String(state.threshold));
  if (state.pixelThreshold !== null) q.set("pixel_threshold", String(state.pixelThreshold));
  if (state.cls) q.set("cls", state.cls);
  return q;
}

let redecideTimer = null;
function scheduleRedecide() {
  clearTimeout(redecideTimer);
  redecideTimer = setTimeout(redecide, 120);
}

async function redecide() {
  if (!state.order.length) return;
  const seq = ++state.decideSeq;
  await whileBusy(async () => {
    const doc = await api("POST", "/api/decide", JSON.stringify({
      ids: state.order, threshold: state.threshold, pixel_threshold: state.pixelThreshold, cls: state.cls,
    }), { "Content-Type": "application/json" });
    if (seq !== state.decideSeq) return;  // a newer slider position is on its way
    for (const r of doc.results) state.results.set(r.id, r);
    for (const id of doc.missing) message(`result ${id} is no longer kept by the app: score the image again`);
    renderGallery();
    showSelected();
  });
}

// --- scoring ----------------------------------------------------------------------------------------------------

async function scoreFile(file) {
  const max = state.info.max_upload_bytes;
  if (file.size > max) {  // said here, before sending it: the server refuses it anyway
    message(`${file.name}: ${(file.size / 1e6).toFixed(1)} MB is above the upload limit of ` +
            `${(max / 1e6).toFixed(1)} MB (wmoe app --max-upload-mb)`);
    return;
  }
  const q = decisionQuery();
  q.set("name", file.name);
  await score(`/api/score?${q}`, file);
}

async function scoreDemo(path, cls) {
  if (cls && state.info.classes[cls] && state.cls !== cls) {
    state.cls = cls;
    $("class-select").value = cls;
    useStored();
    syncThresholdInputs();
  }
  const q = decisionQuery();
  q.set("demo", path);
  await score(`/api/score?${q}`, null);
}

async function score(url, body) {
  const t0 = performance.now();
  await whileBusy(async () => {
    const doc = await api("POST", url, body, body ? { "Content-Type": "application/octet-stream" } : {});
    const r = doc.result;
    r.round_trip_ms = performance.now() - t0;
    state.results.set(r.id, r);
    state.order.unshift(r.id);
    for (const n of r.notes) message(n, "note");
    state.selected = r.id;
    syncThresholdInputs();
    renderGallery();
    showSelected();
  });
}

async function scoreFiles(files) {
  for (const f of files) await scoreFile(f);  // one at a time: the model scores one image at a time anyway
}

// --- showing ----------------------------------------------------------------------------------------------------

function areaText(r) {
  if (r.defect_area === null) return "— (no pixel threshold)";
  const px = Math.round(r.defect_area * r.width * r.height);
  return `${(100 * r.defect_area).toFixed(2)} % of the image (≈ ${px} px of ${r.width}×${r.height})`;
}

function showSelected() {
  const r = state.results.get(state.selected);
  if (!r) return;
  $("placeholder").hidden = true;
  $("summary").hidden = false;
  const v = $("verdict");
  v.dataset.verdict = r.verdict;
  v.textContent = VERDICT_TEXT[r.verdict] + (r.verdict === "undecided" ? " (no threshold)" : "");
  $("image-name").textContent = r.name + (r.cls ? `  [${r.cls}]` : "");
  const s = $("score");
  s.dataset.score = String(r.score);
  s.dataset.threshold = r.threshold === null ? "" : String(r.threshold);
  s.textContent = r.threshold === null ? `${fmt(r.score)} (no threshold)`
    : `${fmt(r.score)} ${r.score >= r.threshold ? "≥" : "<"} threshold ${fmt(r.threshold)}`;
  $("area").textContent = areaText(r);
  $("latency").textContent = `model ${r.model_ms.toFixed(1)} ms · decode ${r.decode_ms.toFixed(1)} ms` +
    (r.round_trip_ms ? ` · round trip ${r.round_trip_ms.toFixed(0)} ms` : "");
  const img = $("overlay");
  const q = decisionQuery();
  q.set("id", r.id);
  const src = `/api/overlay?${q}`;
  if (img.dataset.src !== src) {
    // a newer picture may replace one still loading (the old one then fires no event): busy is counted once
    // per loading spell and ended by the handlers of the latest picture only
    img.dataset.src = src;
    img.dataset.loaded = "0";
    if (!state.overlayLoading) {
      state.overlayLoading = true;
      setBusy(+1);
    }
    const done = () => { state.overlayLoading = false; setBusy(-1); };
    img.onload = () => { img.dataset.loaded = "1"; done(); };
    img.onerror = () => { message(`${r.name}: the overlay could not be drawn`); done(); };
    img.src = src;
  }
  img.hidden = false;
  $("legend").hidden = false;
}

function renderGallery() {
  const body = $("gallery").querySelector("tbody");
  body.textContent = "";
  for (const id of state.order) {
    const r = state.results.get(id);
    const tr = document.createElement("tr");
    tr.dataset.id = id;
    tr.dataset.verdict = r.verdict;
    tr.dataset.score = String(r.score);
    if (id === state.selected) tr.className = "selected";
    const cells = [r.name, fmt(r.score), null,
                   r.defect_area === null ? "—" : `${(100 * r.defect_area).toFixed(1)} %`, r.model_ms.toFixed(0)];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      if (i === 2) {
        const b = document.createElement("span");
        b.className = "badge";
        b.dataset.verdict = r.verdict;
        b.textContent = VERDICT_TEXT[r.verdict];
        td.appendChild(b);
      } else {
        td.textContent = text;
      }
      tr.appendChild(td);
    });
    tr.addEventListener("click", () => {
      state.selected = id;
      renderGallery();
      showSelected();
    });
    body.appendChild(tr);
  }
  const any = state.order.length > 0;
  $("gallery").hidden = !any;
  $("gallery-title").hidden = !any;
}

// --- wiring -----------------------------------------------------------------------------------------------------

function wire() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    scoreFiles([...e.dataTransfer.files]);
  });
  document.addEventListener("dragover", (e) => e.preventDefault());  // a miss outside the zone does not navigate
  document.addEventListener("drop", (e) => e.preventDefault());
  $("file-input").addEventListener("change", (e) => {
    const files = [...e.target.files];
    e.target.value = "";  // the same file can be chosen again
    scoreFiles(files);
  });
  $("demo-score").addEventListener("click", () => {
    const opt = $("demo-select").selectedOptions[0];
    if (opt) scoreDemo(opt.value, opt.dataset.cls);
  });
  const onThreshold = (v) => {
    if (!Number.isFinite(v)) return;
    state.threshold = v;
    syncThresholdInputs();
    scheduleRedecide();
  };
  $("threshold").addEventListener("input", (e) => onThreshold(parseFloat(e.target.value)));
  $("threshold-number").addEventListener("change", (e) => onThreshold(parseFloat(e.target.value)));
  const onPixel = (v) => {
    if (!Number.isFinite(v)) return;
    state.pixelThreshold = Math.min(1, Math.max(0, v));
    syncThresholdInputs();
    scheduleRedecide();
  };
  $("pixel-threshold").addEventListener("input", (e) => onPixel(parseFloat(e.target.value)));
  $("pixel-threshold-number").addEventListener("change", (e) => onPixel(parseFloat(e.target.value)));
  $("threshold-reset").addEventListener("click", () => {
    state.threshold = storedFor(state.cls).threshold;
    syncThresholdInputs();
    scheduleRedecide();
  });
  $("pixel-threshold-reset").addEventListener("click", () => {
    state.pixelThreshold = storedFor(state.cls).pixel;
    syncThresholdInputs();
    scheduleRedecide();
  });
  $("class-select").addEventListener("change", (e) => {
    state.cls = e.target.value;
    useStored();
    syncThresholdInputs();
    scheduleRedecide();
  });
}

async function start() {
  wire();
  try {
    const info = await api("GET", "/api/info");
    state.info = info;
    $("model").textContent = `${info.model} · stored threshold ${fmt(info.threshold)}` +
      (info.pixel_threshold === null ? "" : ` · pixel ${fmt(info.pixel_threshold)}`);
    $("limits").textContent = `PNG, JPEG, TIFF, BMP, WebP up to ${(info.max_upload_bytes / 1e6).toFixed(0)} MB ` +
      `and ${(info.max_image_pixels / 1e6).toFixed(0)} MP`;
    const classes = Object.keys(info.classes).sort();
    if (classes.length) {
      const sel = $("class-select");
      sel.appendChild(new Option("(all products: the global threshold)", ""));
      for (const c of classes) sel.appendChild(new Option(c, c));
      $("class-row").hidden = false;
    }
    useStored();
    syncThresholdInputs();
    if (info.demo) {
      const demo = await api("GET", "/api/demo");
      const sel = $("demo-select");
      const groups = new Map();
      for (const im of demo.images) {
        if (!groups.has(im.cls)) {
          const g = document.createElement("optgroup");
          g.label = im.cls;
          groups.set(im.cls, g);
          sel.appendChild(g);
        }
        const o = new Option(`${im.path}  (${im.label})`, im.path);
        o.dataset.cls = im.cls;
        groups.get(im.cls).appendChild(o);
      }
      $("demo-box").hidden = false;
    }
    document.body.dataset.ready = "1";
  } catch (e) {
    message(e.message);
  }
}

start();
