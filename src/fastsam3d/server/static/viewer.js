// fastsam3d web viewer: NiiVue for display, the fastsam3d REST API for segmentation.
// The label overlay is patched in place from each answer's changed region (never reloaded).
"use strict";

const COLOURS = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
  [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]];
const $ = (id) => document.getElementById(id);
const state = { session: null, objects: [], active: null, mode: "include", corner: null, pending: null, busy: false };
const nv = new niivue.Niivue({ backColor: [0.07, 0.07, 0.07, 1], show3Dcrosshair: true, dragAndDropEnabled: false,
  multiplanarShowRender: niivue.SHOW_RENDER ? niivue.SHOW_RENDER.ALWAYS : 2 });
window.fastsam3d = { nv, state };  // for tests and the console

function headers(extra = {}) {
  const key = $("apikey").value.trim();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

function setStatus(status, text) {
  document.body.dataset.status = status;
  if (text !== undefined) $("status").textContent = text;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  setStatus("error");
}

async function api(path, options = {}) {
  const init = { ...options, headers: headers(options.headers || {}) };
  if (options.json !== undefined) {
    init.body = JSON.stringify(options.json);
    init.headers["Content-Type"] = "application/json";
    init.method = init.method || "POST";
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try { const body = await response.json(); detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail); } catch (e) { /* not JSON */ }
    throw new Error(detail);
  }
  return response;
}

async function inflate(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function patch(volume, region) {
  // Write a changed box (i fastest) into a NiiVue volume's voxels, then re-upload it.
  const raw = await inflate(region.data);
  const values = region.dtype === "uint16" ? new Uint16Array(raw.buffer) : raw;
  const [nx, ny] = volume.hdr.dims.slice(1, 3);
  const [i0, j0, k0] = region.start;
  const [i1, j1, k1] = region.stop;
  const w = i1 - i0, h = j1 - j0;
  const img = volume.img;
  let n = 0;
  for (let k = k0; k < k1; k++) {
    for (let j = j0; j < j1; j++) {
      const row = i0 + nx * (j + ny * k);
      img.set(values.subarray(n, n + w), row);
      n += w;
    }
  }
  nv.updateGLVolume();
}

function labelColormap(count) {
  const cmap = { R: [], G: [], B: [], A: [], I: [] };
  for (let i = 0; i <= Math.max(count, 1); i++) {
    const c = COLOURS[i % COLOURS.length];
    cmap.R.push(c[0]); cmap.G.push(c[1]); cmap.B.push(c[2]); cmap.A.push(i === 0 ? 0 : 255); cmap.I.push(i);
  }
  return cmap;
}

function renderObjects() {
  const list = $("objects");
  list.innerHTML = "";
  for (const obj of state.objects) {
    const item = document.createElement("li");
    const c = COLOURS[obj.label % COLOURS.length];
    item.innerHTML = `<span class="swatch" style="background: rgb(${c})"></span>${obj.name}`;
    item.classList.toggle("active", obj.label === state.active);
    item.onclick = () => { state.active = obj.label; renderObjects(); };
    list.appendChild(item);
  }
  if (nv.volumes.length > 1) {
    nv.volumes[1].setColormapLabel(labelColormap(Math.max(0, ...state.objects.map((o) => o.label))));
    nv.updateGLVolume();
  }
}

function countLabels() {
  const img = nv.volumes.length > 1 ? nv.volumes[1].img : [];
  let count = 0;
  for (let i = 0; i < img.length; i++) if (img[i]) count++;
  document.body.dataset.labelled = String(count);
}

async function interact(path, body) {
  if (!state.session || state.busy) return;
  state.busy = true;
  setStatus("busy", "segmenting…");
  const started = performance.now();
  try {
    const answer = await (await api(`/api/sessions/${state.session.id}/${path}`, { json: body })).json();
    if (answer.region) await patch(nv.volumes[1], answer.region);
    state.objects = answer.objects;
    state.active = answer.object ?? state.active;
    renderObjects();
    countLabels();
    const t = answer.timings_ms;
    $("latency").textContent = `${(performance.now() - started).toFixed(0)} ms round trip (server ${t.server.toFixed(0)}: ` +
      `encoder ${t.encoder.toFixed(0)}, decoder ${t.decoder.toFixed(0)}, paste ${t.paste.toFixed(0)})`;
    $("error").hidden = true;
    setStatus("ready", "ready");
  } catch (error) {
    showError(error.message);
  } finally {
    state.busy = false;
    if ($("uncertainty").checked) refreshUncertainty();
  }
}

async function openSession(answer) {
  state.session = answer;
  state.objects = answer.objects;
  state.active = null;
  const url = (name) => ({ url: `/api/sessions/${answer.id}/${name}`, headers: headers() });
  await nv.loadVolumes([
    { ...url("image.nii.gz"), name: "image.nii.gz", colormap: "gray" },
    { ...url("labels?format=nii.gz"), name: "labels.nii.gz", opacity: Number($("opacity").value) },
  ]);
  nv.setSliceType(nv.sliceTypeMultiplanar);
  applyWindow();
  renderObjects();
  countLabels();
  $("dicom-seg").disabled = !answer.dicom;
  $("error").hidden = true;
  setStatus("ready", `${answer.name}: ${answer.shape.join("×")} voxels, ${answer.spacing.map((s) => s.toFixed(2)).join("×")} mm, ${answer.orientation}`);
}

function applyWindow() {
  if (!nv.volumes.length) return;
  const volume = nv.volumes[0];
  const choice = $("window").value;
  if (choice === "auto") {
    volume.cal_min = volume.robust_min;
    volume.cal_max = volume.robust_max;
  } else {
    const [level, width] = choice.split(",").map(Number);
    volume.cal_min = level - width / 2;
    volume.cal_max = level + width / 2;
  }
  nv.updateGLVolume();
}

async function refreshUncertainty() {
  if (!state.session || state.active == null) return;
  try {
    const answer = await (await api(`/api/sessions/${state.session.id}/uncertainty`, { json: { samples: 8 } })).json();
    if (nv.volumes.length < 3) {
      await nv.addVolumeFromUrl({ url: `/api/sessions/${state.session.id}/labels?format=nii.gz`, headers: headers(),
        name: "uncertainty.nii.gz", colormap: "warm", opacity: 0.6 });
    }
    const volume = nv.volumes[2];
    volume.img.fill(0);
    volume.cal_min = 1; volume.cal_max = 255;
    volume.setColormap("warm");
    await patch(volume, answer.region);
  } catch (error) {
    showError(`uncertainty: ${error.message}`);
  }
}

function clearUncertainty() {
  if (nv.volumes.length > 2) nv.removeVolume(nv.volumes[2]);
}

// --- clicks on the canvas ----------------------------------------------------------------------

$("gl").addEventListener("pointerdown", (event) => {
  if (event.button === 0) state.pending = { shift: event.shiftKey, time: performance.now() };
});

nv.onLocationChange = (location) => {
  const pending = state.pending;
  state.pending = null;
  if (!pending || performance.now() - pending.time > 1000 || !state.session || !location.mm) return;
  // NiiVue's voxel indices refer to its RAS-reoriented copy of the image; world millimetres (RAS)
  // are unambiguous, so clicks travel as RAS points and the server maps them to its voxels.
  const point = Array.from(location.mm).slice(0, 3);
  state.lastPoint = point;
  if (state.mode === "box") {
    if (!state.corner) {
      state.corner = point;
      setStatus("ready", `box: first corner at ${point.map((v) => v.toFixed(1)).join(", ")} mm; click the opposite corner`);
      return;
    }
    const body = { corner_a: state.corner, corner_b: point, coordinates: "ras", object: state.active };
    state.corner = null;
    interact("box", body);
    return;
  }
  const positive = state.mode === "include" && !pending.shift;
  interact("clicks", { points: [point], positive, coordinates: "ras", object: state.active });
};

// --- controls ---------------------------------------------------------------------------------

for (const button of document.querySelectorAll(".modes button")) {
  button.onclick = () => {
    state.mode = button.dataset.mode;
    state.corner = null;
    for (const other of document.querySelectorAll(".modes button")) other.classList.toggle("active", other === button);
  };
}
$("undo").onclick = () => interact("undo", { object: state.active });
$("redo").onclick = () => interact("redo", { object: state.active });
$("reset").onclick = () => interact("reset", { object: state.active });
$("new-object").onclick = async () => {
  if (!state.session) return;
  try {
    const answer = await (await api(`/api/sessions/${state.session.id}/objects`, { json: {} })).json();
    state.objects = answer.objects;
    state.active = answer.object;
    renderObjects();
  } catch (error) { showError(error.message); }
};
$("window").onchange = applyWindow;
$("opacity").oninput = () => { if (nv.volumes.length > 1) nv.setOpacity(1, Number($("opacity").value)); };
$("uncertainty").onchange = () => ($("uncertainty").checked ? refreshUncertainty() : clearUncertainty());
document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT") return;
  if ((event.ctrlKey || event.metaKey) && event.key === "z") $("undo").click();
  if ((event.ctrlKey || event.metaKey) && event.key === "y") $("redo").click();
  if (event.key === "n") $("new-object").click();
});
for (const button of document.querySelectorAll(".download")) {
  button.onclick = async () => {
    if (!state.session) return;
    try {
      const format = button.dataset.format;
      const blob = await (await api(`/api/sessions/${state.session.id}/labels?format=${format}`)).blob();
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = `${state.session.name.split("/").pop().split(".")[0] || "segmentation"}-labels.${format}`;
      document.body.appendChild(link);
      link.click();
      link.remove();
    } catch (error) { showError(error.message); }
  };
}
$("open").onclick = async () => {
  const path = $("files").value;
  if (!path) return;
  try {
    setStatus("busy", `opening ${path}…`);
    await openSession(await (await api("/api/sessions", { json: { path } })).json());
  } catch (error) { showError(error.message); }
};
$("upload").onchange = async () => {
  const file = $("upload").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  try {
    setStatus("busy", `uploading ${file.name}…`);
    await openSession(await (await api("/api/sessions/upload", { method: "POST", body: form })).json());
  } catch (error) { showError(error.message); }
};
$("apikey").value = localStorage.getItem("fastsam3d-api-key") || "";
$("apikey").onchange = () => { localStorage.setItem("fastsam3d-api-key", $("apikey").value); loadFiles(); };

async function loadFiles() {
  try {
    const { files } = await (await api("/api/files")).json();
    $("files").innerHTML = files.map((f) => `<option>${f}</option>`).join("");
  } catch (error) {
    $("files").innerHTML = "";
    if (!/without --data/.test(error.message)) showError(error.message);
  }
}

setInterval(() => { if (state.session) api(`/api/sessions/${state.session.id}/heartbeat`, { method: "POST" }).catch(() => {}); }, 60000);

(async () => {
  await nv.attachTo("gl");
  await loadFiles();
  setStatus("idle");
})();
