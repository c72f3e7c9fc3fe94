// hbpn serve page: pick or drop an image, POST it to /api/upscale, compare before/after.
// Plain JS, no framework and nothing from a CDN: the service works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("form"), fileInput = $("file"), drop = $("drop"), go = $("go");
const progress = $("progress"), progressText = $("progress-text"), errorBox = $("error");
const result = $("result"), compare = $("compare"), before = $("before"), after = $("after");

let file = null;          // the chosen File
let beforeUrl = null;     // object URLs, revoked when replaced
let afterUrl = null;
let limits = null;
const MIN_DISPLAY = 512;  // CSS pixels

function megabytes(n) {
  if (n < 1024 * 1024) return Math.max(1, Math.round(n / 1024)) + " kB";
  return (n / (1024 * 1024)).toFixed(n < 10 * 1024 * 1024 ? 1 : 0) + " MB";
}
function megapixels(n) { return (n / 1e6).toFixed(1) + " MP"; }

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

async function loadHealth() {
  try {
    const res = await fetch("/api/health");
    const health = await res.json();
    limits = health.limits;
    $("version").textContent = "hbpn " + health.version;
    const select = $("model");
    select.replaceChildren(...health.models.map((name) => new Option(name, name, name === health.default_model)));
    const uses = health.model_uses || {};
    const showUse = () => {
      const use = uses[select.value];
      $("model-use").textContent = use ? `${select.value}: for ${use}.` : "";
    };
    select.addEventListener("change", showUse);
    showUse();
    $("scale").min = limits.min_scale;
    $("scale").max = limits.max_scale;
    $("limits").textContent =
      `Up to ${megabytes(limits.max_upload_bytes)} per upload and ${megapixels(limits.max_pixels)} per result; ` +
      `scale ${limits.min_scale} to ${limits.max_scale}.`;
  } catch (err) {
    showError("Cannot reach the service: " + err);
  }
}

function choose(f) {
  if (!f) return;
  file = f;
  $("filename").textContent = `${f.name} (${megabytes(f.size)})`;
  showError(limits && f.size > limits.max_upload_bytes
    ? `${f.name} is ${megabytes(f.size)}, over the upload limit of ${megabytes(limits.max_upload_bytes)}` : "");
  go.disabled = false;
}

fileInput.addEventListener("change", () => choose(fileInput.files[0]));
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
}
drop.addEventListener("drop", (e) => choose(e.dataTransfer.files[0]));

// A synchronous request: show upload progress, then elapsed time while the server works.
function send(data) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    const started = performance.now();
    let uploaded = false;
    const tick = setInterval(() => {
      if (uploaded) progressText.textContent = `Upscaling… ${((performance.now() - started) / 1000).toFixed(1)} s`;
    }, 100);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable && !uploaded) progressText.textContent = `Uploading ${Math.round(100 * e.loaded / e.total)} %`;
    };
    xhr.upload.onload = () => { uploaded = true; };
    xhr.responseType = "blob";
    xhr.onload = () => { clearInterval(tick); resolve(xhr); };
    xhr.onerror = () => { clearInterval(tick); resolve(null); };
    // the model in the URL too: a busy model answers 503 before the upload is sent
    xhr.open("POST", "/api/upscale?model=" + encodeURIComponent($("model").value));
    progressText.textContent = "Uploading…";
    xhr.send(data);
  });
}

async function errorMessage(xhr) {
  try {
    const body = JSON.parse(await xhr.response.text());
    let message = body.detail || `HTTP ${xhr.status}`;
    const retry = xhr.getResponseHeader("Retry-After");
    if (xhr.status === 503 && retry) message += ` (the server suggests retrying in ${retry} s)`;
    return message;
  } catch {
    return `HTTP ${xhr.status} ${xhr.statusText}`;
  }
}

form.addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!file) return;
  showError("");
  const data = new FormData();
  data.append("image", file, file.name);
  data.append("scale", $("scale").value);
  data.append("model", $("model").value);
  data.append("ensemble", $("ensemble").checked ? "true" : "false");

  go.disabled = true;
  progress.hidden = false;
  const xhr = await send(data);
  progress.hidden = true;
  go.disabled = false;
  if (!xhr) return showError("The request failed: is the server still running?");
  if (xhr.status !== 200) return showError(await errorMessage(xhr));
  show(xhr);
});

function show(xhr) {
  if (beforeUrl) URL.revokeObjectURL(beforeUrl);
  if (afterUrl) URL.revokeObjectURL(afterUrl);
  beforeUrl = URL.createObjectURL(file);
  afterUrl = URL.createObjectURL(xhr.response);
  before.src = beforeUrl;
  after.onload = () => {
    // Natural size, but at least MIN_DISPLAY wide (small results are hard to see) and at most the page.
    const width = Math.max(after.naturalWidth, MIN_DISPLAY);
    compare.style.width = width + "px";
    compare.classList.toggle("enlarged", width > after.naturalWidth);
  };
  after.src = afterUrl;
  const name = /filename="([^"]+)"/.exec(xhr.getResponseHeader("Content-Disposition") || "");
  const link = $("download");
  link.href = afterUrl;
  link.download = name ? name[1] : "upscaled.png";
  link.textContent = `Download ${link.download}`;
  $("info").textContent =
    `${xhr.getResponseHeader("X-HBPN-Input-Size")} → ${xhr.getResponseHeader("X-HBPN-Output-Size")} ` +
    `with model ${xhr.getResponseHeader("X-HBPN-Model")} at scale ${xhr.getResponseHeader("X-HBPN-Scale")}, ` +
    `${Number(xhr.getResponseHeader("X-HBPN-Seconds")).toFixed(2)} s on the server. ` +
    `Drag across the image to compare with the original.`;
  setSplit(50);
  result.hidden = false;
  result.dataset.ready = "true";
}

// Before/after slider: the original (left of the split) is clipped over the result.
function setSplit(percent) {
  const p = Math.min(100, Math.max(0, percent));
  compare.style.setProperty("--split", p + "%");
  $("split").value = p;
}
$("split").addEventListener("input", (e) => setSplit(Number(e.target.value)));
function fromPointer(e) {
  const box = compare.getBoundingClientRect();
  setSplit(100 * (e.clientX - box.left) / box.width);
}
compare.addEventListener("pointerdown", (e) => { compare.setPointerCapture(e.pointerId); fromPointer(e); });
compare.addEventListener("pointermove", (e) => { if (compare.hasPointerCapture(e.pointerId)) fromPointer(e); });

loadHealth();
