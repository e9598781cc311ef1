// fastsam3d web viewer: NiiVue for display, the fastsam3d REST API for segmentation.
//
// Frames: the server's voxels (i, j, k) and world LPS millimetres are the session's own (see its
// `origin`, `spacing`, `direction`); NiiVue holds the image reoriented to RAS voxels and reports
// world RAS millimetres. Clicks travel as RAS points (or, for boxes, as server voxels computed here).
// The label map lives in NiiVue's drawing layer (one uint8 3D texture on NiiVue's grid): each answer's
// changed region is written into it and only that sub-box is uploaded (texSubImage3D), then the
// scene is drawn once. No volume is re-uploaded per interaction.
"use strict";

const COLOURS = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
  [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]];
const UNCERTAINTY_MIN_BITS = 0.1;  // entropy below this is not shown
const UNCERTAINTY_NEAR = 4;  // voxels: entropy is shown only this close to the object
const $ = (id) => document.getElementById(id);
const state = {
  session: null, models: [], model: null, objects: [], active: null, mode: "click", sign: "include", corner: null, pending: null,
  busy: false, labels: null, labelled: 0, ras: null, history: {}, hover: null, paintMs: null, lastPoint: null,
  queue: [],  // [path, body] of prompts made while a request runs, applied in order after it
  drawing: null,  // the stroke being drawn: {kind, positive, tile, axis, index, points (server voxels)}
  sent: [],  // strokes sent or queued, drawn until their answer comes (then kept in the history, or dropped)
  sessions: [],  // GET /api/sessions, for the Sessions panel
};
const MAX_STROKE_POINTS = 500;  // a drawn path is thinned to at most this many points
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 3000, 5000, 5000, 5000, 5000];  // server down or restarting
const nv = new niivue.Niivue({
  backColor: [0.07, 0.07, 0.07, 1], show3Dcrosshair: true, dragAndDropEnabled: false, isRadiologicalConvention: true,
  viewModeHotKey: "", clipPlaneHotKey: "", multiplanarShowRender: niivue.SHOW_RENDER.ALWAYS,
});
window.fastsam3d = {  // for tests and the console
  nv, state, markers: () => drawMarkers(), interact: (path, body) => interact(path, body),
  sessions: () => loadSessions(), resume: (id) => resumeSession(id),
  toCanvas: (mm, tile = 0) => {  // a world RAS point on a 2D tile (0 axial, 1 coronal, 2 sagittal), CSS pixels
    const slice = nv.screenSlices.find((s) => s.axCorSag === tile && s.AxyzMxy && s.AxyzMxy.length >= 4);
    const at = tileOf(mm, slice), dpr = $("gl").width / $("gl").clientWidth;
    return [at.x / dpr, at.y / dpr];
  },
};

// --- server ------------------------------------------------------------------------------------

function headers(extra = {}) {
  const key = $("apikey").value.trim();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

const HELD_RETRIES = 20; // 409: another server (replica) still holds the session; its lease frees it

async function api(path, options = {}) {
  const init = { ...options, headers: headers(options.headers || {}) };
  if (options.json !== undefined) {
    init.body = JSON.stringify(options.json);
    init.headers["Content-Type"] = "application/json";
    init.method = init.method || "POST";
  }
  let response = await reach(path, init);
  for (let tries = 0; response.status === 409 && tries < HELD_RETRIES; tries++) {
    await sleep(1500);
    response = await reach(path, init);
  }
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try { const body = await response.json(); detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail); } catch (e) { /* not JSON */ }
    const sessionId = (path.match(/^\/api\/sessions\/([^/?]+)/) || [])[1];
    if (response.status === 404 && sessionId && sessionId !== "upload") throw sessionGone(sessionId);
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function sessionGone(id) {
  const error = new Error(`session ${id} is no longer on the server (closed, expired, or the server was restarted ` +
    "without its state folder): open the Sessions list (↻) and Resume a saved session, or open the volume again");
  error.status = 404;
  error.gone = true;
  return error;
}

async function reach(path, init) {
  // fetch, retried while the server does not answer at all (stopped, restarting: the request never
  // arrived). When it answers again, a request for a session goes on only if the server still lists
  // that session (a restarted server reopens its saved sessions), so the view stays as it is.
  const id = (path.match(/^\/api\/sessions\/([^/?]+)/) || [])[1];
  for (let attempt = 0; ; attempt++) {
    try {
      if (attempt > 0 && id && id !== "upload" && init.method !== "DELETE") {
        const listed = await fetch("/api/sessions", { headers: init.headers });
        if (listed.ok) {
          const rows = (await listed.json()).sessions || [];
          renderSessions(rows);
          if (!rows.some((row) => row.id === id)) throw sessionGone(id);
        }
      }
      const response = await fetch(path, init);
      delete document.body.dataset.reconnecting;
      return response;
    } catch (error) {
      if (error.gone || attempt >= RECONNECT_DELAYS_MS.length) {
        delete document.body.dataset.reconnecting;
        if (error.gone) throw error;
        throw new Error(`the server does not answer (${error.message}); try again once it runs`);
      }
      document.body.dataset.reconnecting = String(attempt + 1);
      $("status").textContent = `the server does not answer; retrying (${attempt + 1} / ${RECONNECT_DELAYS_MS.length})…`;
      await sleep(RECONNECT_DELAYS_MS[attempt]);
    }
  }
}

async function readAnswer(response, onProgress) {
  // A plain JSON answer, or (servers that stream, `?stream=true`) newline-delimited JSON events:
  // {"event": "progress", "region": ...} while slices are segmented, then "result" or "error".
  if (!(response.headers.get("content-type") || "").includes("ndjson")) return response.json();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let result = null;
  const handle = async (line) => {
    if (!line.trim()) return;
    const event = JSON.parse(line);
    if (event.event === "progress") await onProgress(event);
    else if (event.event === "result") result = event;
    else if (event.event === "error") throw new Error(event.detail || `server error ${event.status || ""}`);
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
      await handle(line);
    }
    if (done) break;
  }
  await handle(buffer);
  if (!result) throw new Error("the server's answer ended without a result");
  return result;
}

async function inflate(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function regionValues(region) {
  const raw = await inflate(region.data);
  return region.dtype === "uint16" ? new Uint16Array(raw.buffer, raw.byteOffset, raw.length / 2) : raw;
}

// --- geometry: server voxels <-> world ---------------------------------------------------------

function matrix3Inverse(m) {
  const [[a, b, c], [d, e, f], [g, h, i]] = m;
  const A = e * i - f * h, B = -(d * i - f * g), C = d * h - e * g;
  const det = a * A + b * B + c * C;
  return [[A / det, -(b * i - c * h) / det, (b * f - c * e) / det],
    [B / det, (a * i - c * g) / det, -(a * f - c * d) / det],
    [C / det, -(a * h - b * g) / det, (a * e - b * d) / det]];
}

function geometry(session) {
  // index -> LPS: origin + direction @ (spacing * index); its inverse for world -> index
  const linear = session.direction.map((row) => row.map((v, axis) => v * session.spacing[axis]));
  return { linear, inverse: matrix3Inverse(linear), origin: session.origin, shape: session.shape, spacing: session.spacing,
    // the server axis closest to superior-inferior: its index is the axial slice number
    axial: [0, 1, 2].reduce((best, axis) => (Math.abs(session.direction[2][axis]) > Math.abs(session.direction[2][best]) ? axis : best), 0) };
}

function rasToIndex(mm) {
  const g = state.session.geometry;
  const d = [-mm[0] - g.origin[0], -mm[1] - g.origin[1], mm[2] - g.origin[2]];
  return g.inverse.map((row) => row[0] * d[0] + row[1] * d[1] + row[2] * d[2]);
}

function indexToRas(index) {
  const g = state.session.geometry;
  const lps = g.linear.map((row, r) => g.origin[r] + row[0] * index[0] + row[1] * index[1] + row[2] * index[2]);
  return [-lps[0], -lps[1], lps[2]];
}

function rasMapping(volume) {
  // NiiVue's RAS voxel (x, y, z) holds native voxel start[0] + x*step[0] + start[1] + y*step[1] + start[2] + z*step[2].
  // For each RAS axis: the native axis it runs along and whether it runs backwards.
  const dims = volume.hdr.dims.slice(1, 4);
  const strides = [1, dims[0], dims[0] * dims[1]];
  const step = volume.img2RASstep, start = volume.img2RASstart;
  const axis = [0, 1, 2].map((r) => {
    const candidates = [0, 1, 2].filter((a) => strides[a] === Math.abs(step[r]));
    return candidates.length === 1 ? candidates[0] : candidates.find((a) => dims[a] === volume.dimsRAS[r + 1]);
  });
  return { dims, rasDims: volume.dimsRAS.slice(1, 4), step, start, axis, flip: step.map((s) => s < 0) };
}

// --- labels: the drawing layer, patched per region --------------------------------------------

async function paintRegion(region, saved = null) {
  // Write an answer's changed box (server voxels, i fastest) into the label map and NiiVue's
  // drawing texture, uploading only that box (the caller draws the scene once). With `saved`, the
  // box's previous labels are pushed onto it first (to take a streamed answer back, see unpaint).
  const started = performance.now();
  const values = await regionValues(region);
  state.decodeMs = performance.now() - started;
  if (saved) saved.push({ start: region.start, stop: region.stop, values: boxValues(region.start, region.stop) });
  paintValues(region.start, region.stop, values);
}

function boxValues(start, stop) {
  const [nx, ny] = state.ras.dims;
  const out = new Uint16Array((stop[0] - start[0]) * (stop[1] - start[1]) * (stop[2] - start[2]));
  let n = 0;
  for (let k = start[2]; k < stop[2]; k++) {
    for (let j = start[1]; j < stop[1]; j++) {
      const at = start[0] + nx * (j + ny * k);
      out.set(state.labels.subarray(at, at + stop[0] - start[0]), n);
      n += stop[0] - start[0];
    }
  }
  return out;
}

function unpaint(saved) {
  // Restore boxes saved by paintRegion, newest first (a stream that ended in an error changed nothing).
  for (const box of saved.reverse()) paintValues(box.start, box.stop, box.values);
  saved.length = 0;
}

function paintValues(start, stop, values) {
  const m = state.ras;
  const [nx, ny] = m.dims;
  const [i0, j0, k0] = start;
  const [i1, j1, k1] = stop;
  const labels = state.labels;
  let n = 0, delta = 0;
  for (let k = k0; k < k1; k++) {
    for (let j = j0; j < j1; j++) {
      let at = i0 + nx * (j + ny * k);
      for (let i = i0; i < i1; i++, at++, n++) {
        const value = values[n];
        delta += (value !== 0) - (labels[at] !== 0);
        labels[at] = value;
      }
    }
  }
  state.labelled += delta;
  document.body.dataset.labelled = String(state.labelled);
  // the same box on NiiVue's RAS grid
  const lo = [0, 0, 0], size = [0, 0, 0];
  for (let r = 0; r < 3; r++) {
    const a = m.axis[r];
    const [s, e] = [start[a], stop[a]];
    lo[r] = m.flip[r] ? m.dims[a] - e : s;
    size[r] = e - s;
  }
  if (size.some((s) => s <= 0)) return;
  const [X, Y] = m.rasDims;
  const bitmap = nv.drawBitmap;
  const sub = new Uint8Array(size[0] * size[1] * size[2]);
  n = 0;
  for (let z = lo[2]; z < lo[2] + size[2]; z++) {
    const zAt = m.start[2] + z * m.step[2];
    for (let y = lo[1]; y < lo[1] + size[1]; y++) {
      const yzAt = zAt + m.start[1] + y * m.step[1];
      let out = lo[0] + X * (y + Y * z);
      for (let x = lo[0]; x < lo[0] + size[0]; x++, out++, n++) {
        const label = labels[m.start[0] + x * m.step[0] + yzAt];
        const value = label > 255 ? ((label - 1) % 255) + 1 : label;  // the drawing layer holds 255 labels
        bitmap[out] = value;
        sub[n] = value;
      }
    }
  }
  const gl = nv.gl;
  gl.activeTexture(gl.TEXTURE7);  // NiiVue's drawing unit
  gl.bindTexture(gl.TEXTURE_3D, nv.drawTexture);
  gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
  gl.texSubImage3D(gl.TEXTURE_3D, 0, lo[0], lo[1], lo[2], size[0], size[1], size[2], gl.RED, gl.UNSIGNED_BYTE, sub);
}

function drawLut() {
  const cmap = { R: [], G: [], B: [], A: [], I: [] };
  for (let i = 0; i < 256; i++) {
    const c = COLOURS[i === 0 ? 0 : 1 + ((i - 1) % (COLOURS.length - 1))];
    cmap.R.push(c[0]); cmap.G.push(c[1]); cmap.B.push(c[2]); cmap.A.push(i === 0 ? 0 : 255); cmap.I.push(i);
  }
  return cmap;
}

function colour(label) {
  return COLOURS[label === 0 ? 0 : 1 + ((label - 1) % 255 % (COLOURS.length - 1))];
}

// --- point and box markers (follow undo/redo) --------------------------------------------------

function historyOf(label) {
  if (!state.history[label]) state.history[label] = { done: [], undone: [] };
  return state.history[label];
}

function visibleSteps(label) {
  const done = historyOf(label).done;
  let from = 0;
  done.forEach((step, index) => { if (step.reset) from = index + 1; });
  return done.slice(from);
}

function record(label, path, body, answer) {
  const history = historyOf(label);
  if (path === "undo" || path === "redo") {
    if (answer.changed === false) return;
    const [source, target] = path === "undo" ? [history.done, history.undone] : [history.undone, history.done];
    if (source.length) target.push(source.pop());
    return;
  }
  history.undone = [];
  if (path === "clicks") {
    const signs = Array.isArray(body.positive) ? body.positive : body.points.map(() => body.positive);
    history.done.push({ points: body.points.map((p, i) => ({ mm: body.coordinates === "ras" ? p : indexToRas(p), positive: signs[i] })) });
  } else if (path === "box") {
    history.done.push({ box: [body.corner_a, body.corner_b].map(indexToRas) });
  } else if (path === "scribble" || path === "lasso") {
    history.done.push({ stroke: strokeOf(path, body) });
  } else if (path === "reset") {
    history.done.push({ reset: true });
  }
}

const drawnOn = new WeakMap();  // a drawn stroke's request body -> the slice axis it was drawn on

function strokeOf(kind, body) {
  // a sent stroke's outline: its server voxels and the slice they lie on (a lasso's, or a scribble's when flat)
  let flat = [0, 1, 2].filter((axis) => body.points.every((p) => p[axis] === body.points[0][axis]));
  if (drawnOn.has(body)) flat = [drawnOn.get(body)];
  return { kind, positive: body.positive, points: body.points, axis: flat.length === 1 ? flat[0] : null,
    index: flat.length === 1 ? body.points[0][flat[0]] : null };
}

function tileOf(mm, slice) {
  // Where a world RAS point falls in a 2D tile (canvas pixels) and how far it lies from the tile's plane (mm).
  let r = mm;
  if (slice.axCorSag === 1) r = [mm[0], mm[2], mm[1]];
  if (slice.axCorSag === 2) r = [mm[1], mm[2], mm[0]];
  const a = slice.AxyzMxy;
  const depth = Math.abs(r[2] - (a[2] + a[4] * (r[1] - a[1]) - a[3] * (r[0] - a[0])));
  const fx = (r[0] - slice.leftTopMM[0]) / slice.fovMM[0], fy = (r[1] - slice.leftTopMM[1]) / slice.fovMM[1];
  const ltwh = slice.leftTopWidthHeight.slice();
  let x = fx;
  if (ltwh[2] < 0) { ltwh[0] += ltwh[2]; ltwh[2] = -ltwh[2]; x = 1 - fx; }
  return { x: ltwh[0] + x * ltwh[2], y: ltwh[1] + (1 - fy) * ltwh[3], depth, inside: fx >= 0 && fx <= 1 && fy >= 0 && fy <= 1 };
}

function drawMarkers() {
  // Draw the visible prompts of every object on the 2D tiles whose slice they lie on; returns what
  // was drawn (CSS pixels, for tests).
  const canvas = $("marks"), gl = $("gl");
  if (canvas.width !== gl.width || canvas.height !== gl.height) { canvas.width = gl.width; canvas.height = gl.height; }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const drawn = [];
  if (!state.session || !nv.screenSlices) return drawn;
  const dpr = gl.width / gl.clientWidth || 1;
  const tolerance = Math.min(...state.session.spacing) / 2 + 0.01;
  const tiles = nv.screenSlices.filter((s) => s.axCorSag <= 2 && s.AxyzMxy && s.AxyzMxy.length >= 4);
  const steps = [];
  for (const obj of state.objects) for (const step of visibleSteps(obj.label)) steps.push([obj.label, step]);
  if (state.corner) steps.push([state.active, { corner: state.corner, hover: state.hover }]);
  for (const sent of state.sent) steps.push([sent.label, { stroke: sent.stroke, pending: true }]);
  if (state.drawing) steps.push([state.active, { stroke: state.drawing, pending: true }]);
  for (const slice of tiles) {
    for (const [label, step] of steps) {
      ctx.globalAlpha = label === state.active ? 1 : 0.5;
      for (const point of step.points || []) {
        const at = tileOf(point.mm, slice);
        if (!at.inside || at.depth > tolerance) continue;
        ctx.beginPath();
        ctx.arc(at.x, at.y, 5 * dpr, 0, 2 * Math.PI);
        ctx.fillStyle = point.positive ? "rgb(0, 230, 0)" : "rgb(255, 30, 30)";
        ctx.fill();
        ctx.lineWidth = 1.5 * dpr;
        ctx.strokeStyle = "black";
        ctx.stroke();
        drawn.push({ kind: point.positive ? "include" : "exclude", tile: slice.axCorSag, x: at.x / dpr, y: at.y / dpr, label });
      }
      if (step.stroke && strokeOnTile(step.stroke, slice, tolerance)) {
        const stroke = step.stroke;
        const at = stroke.points.map((p) => tileOf(indexToRas(p), slice));
        ctx.beginPath();
        at.forEach((p, n) => (n ? ctx.lineTo(p.x, p.y) : ctx.moveTo(p.x, p.y)));
        const rgb = stroke.positive ? "0, 230, 0" : "255, 30, 30";
        if (stroke.kind === "lasso" && at.length > 2) {
          ctx.closePath();
          ctx.fillStyle = `rgba(${rgb}, 0.15)`;
          ctx.fill();
        }
        ctx.lineWidth = 2 * dpr;
        ctx.lineJoin = "round";
        ctx.strokeStyle = `rgb(${rgb})`;
        ctx.setLineDash(step.pending ? [4 * dpr, 3 * dpr] : []);
        ctx.stroke();
        ctx.setLineDash([]);
        drawn.push({ kind: stroke.kind, positive: stroke.positive, pending: Boolean(step.pending), tile: slice.axCorSag,
          points: at.length, x: at[0].x / dpr, y: at[0].y / dpr, label });
      }
      const corners = step.box || (step.corner && step.hover ? [step.corner, step.hover] : null);
      if (corners) {
        const [a, b] = corners.map((mm) => tileOf(mm, slice));
        if (step.box ? boxSpans(corners, slice, tolerance) : a.depth <= tolerance) {
          ctx.lineWidth = 2 * dpr;
          ctx.strokeStyle = "rgb(255, 220, 0)";
          ctx.setLineDash(step.box ? [] : [6 * dpr, 4 * dpr]);
          ctx.strokeRect(Math.min(a.x, b.x), Math.min(a.y, b.y), Math.abs(a.x - b.x), Math.abs(a.y - b.y));
          ctx.setLineDash([]);
          drawn.push({ kind: step.box ? "box" : "box-preview", tile: slice.axCorSag, x: Math.min(a.x, b.x) / dpr,
            y: Math.min(a.y, b.y) / dpr, width: Math.abs(a.x - b.x) / dpr, height: Math.abs(a.y - b.y) / dpr, label });
        }
      } else if (step.corner) {
        const at = tileOf(step.corner, slice);
        if (at.depth <= tolerance) {
          ctx.strokeStyle = "rgb(255, 220, 0)";
          ctx.lineWidth = 2 * dpr;
          ctx.beginPath();
          ctx.moveTo(at.x - 6 * dpr, at.y); ctx.lineTo(at.x + 6 * dpr, at.y);
          ctx.moveTo(at.x, at.y - 6 * dpr); ctx.lineTo(at.x, at.y + 6 * dpr);
          ctx.stroke();
          drawn.push({ kind: "corner", tile: slice.axCorSag, x: at.x / dpr, y: at.y / dpr, label });
        }
      }
    }
  }
  ctx.globalAlpha = 1;
  return drawn;
}

function strokeOnTile(stroke, slice, tolerance) {
  // a flat stroke shows on the tile showing its slice; a 3D scribble where a point lies on the tile's plane
  if (!stroke.points.length) return false;
  if (stroke.axis === null) return stroke.points.some((p) => tileOf(indexToRas(p), slice).depth <= tolerance);
  const r = [2, 1, 0][slice.axCorSag];
  return state.ras.axis[r] === stroke.axis && crosshairIndex()[stroke.axis] === stroke.index;
}

function crosshairIndex() {
  // the crosshair's server voxel (NiiVue's RAS voxel mapped back onto the server's axes)
  return serverIndex(nv.frac2vox(nv.scene.crosshairPos));
}

function serverIndex(vox) {
  const m = state.ras, index = [0, 0, 0];
  for (let r = 0; r < 3; r++) {
    const a = m.axis[r];
    index[a] = Math.min(Math.max(m.flip[r] ? m.dims[a] - 1 - vox[r] : vox[r], 0), m.dims[a] - 1);
  }
  return index;
}

function boxSpans(corners, slice, tolerance) {
  // whether a box's range along the tile's normal contains the tile's plane (the crosshair)
  const axis = [2, 1, 0][slice.axCorSag];
  const at = nv.frac2mm(nv.scene.crosshairPos)[axis];
  const depths = corners.map((mm) => mm[axis]);
  return at >= Math.min(...depths) - tolerance && at <= Math.max(...depths) + tolerance;
}

const drawScene = nv.drawScene.bind(nv);
nv.drawScene = (...args) => { const result = drawScene(...args); drawMarkers(); return result; };

// --- interactions -----------------------------------------------------------------------------

function setStatus(status, text) {
  document.body.dataset.status = status;
  if (text !== undefined) $("status").textContent = text;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  setStatus("error", `error: ${message}`);
}

function renderObjects() {
  const list = $("objects");
  list.innerHTML = "";
  for (const obj of state.objects) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${colour(obj.label)})`;
    const ml = document.createElement("span");
    ml.className = "ml";
    ml.title = "volume of the object's mask";
    ml.textContent = obj.volume_ml == null ? "" : `${obj.volume_ml.toFixed(obj.volume_ml >= 10 ? 1 : 2)} ml`;
    item.append(swatch, document.createTextNode(obj.name), ml);
    item.classList.toggle("active", obj.label === state.active);
    item.onclick = () => { state.active = obj.label; renderObjects(); nv.drawScene(); };
    list.appendChild(item);
  }
}

const STROKES = ["scribble", "lasso"];

async function interact(path, body) {
  if (!state.session) return;
  if (STROKES.includes(path) && !state.sent.some((sent) => sent.body === body)) {  // drawn until answered
    state.sent.push({ body, label: body.object ?? state.active, stroke: strokeOf(path, body) });
    drawMarkers();
  }
  if (state.busy) {  // no prompt is lost: it runs when the running request is done
    state.queue.push([path, body]);
    document.body.dataset.queued = String(state.queue.length);
    setStatus("busy", `segmenting… (${state.queue.length} queued)`);
    return;
  }
  state.busy = true;
  setStatus("busy", "segmenting…");
  const started = performance.now();
  let paint = 0;
  const streamed = [];  // boxes painted from progress events, with their previous labels
  try {
    const streams = ["clicks", "box", ...STROKES].includes(path);
    const response = await api(`/api/sessions/${state.session.id}/${path}${streams ? "?stream=true" : ""}`, { json: body });
    const answer = await readAnswer(response, async (event) => {
      state.progressEvents = (state.progressEvents || 0) + 1;
      if (!event.region) return;
      await paintRegion(event.region, streamed);
      nv.drawScene();
      setStatus("busy", `segmenting… ${event.done}${event.total ? ` / ${event.total}` : ""} slices`);
    });
    const received = performance.now();
    if (answer.region) await paintRegion(answer.region);
    const written = performance.now();
    state.objects = answer.objects;
    state.active = answer.object ?? state.active;
    record(body.object ?? state.active, path, body, answer);
    renderObjects();
    nv.drawScene();  // one draw: overlay, markers
    paint = performance.now() - received;
    state.paintMs = paint;
    state.paintStages = { region: written - received, decode: answer.region ? state.decodeMs : 0, draw: performance.now() - written,
      voxels: answer.region ? answer.region.stop.reduce((n, stop, a) => n * (stop - answer.region.start[a]), 1) : 0 };
    document.body.dataset.paintMs = paint.toFixed(1);
    const t = answer.timings_ms || {};
    const f = (v) => (v === undefined ? "–" : v.toFixed(0));
    // stage timings belong to model passes; undo / redo / reset run none (the session's are stale then)
    const stages = streams ? ` (encoder ${f(t.encoder)}, decoder ${f(t.decoder)}, paste ${f(t.paste)})` : "";
    const roundTrip = received - started;
    state.timings = { server: t.server, transfer: t.server === undefined ? undefined : Math.max(roundTrip - t.server, 0), paint, roundTrip };
    $("latency").textContent = `server ${f(t.server)} ms${stages} · transfer ${f(state.timings.transfer)} ms · ` +
      `paint ${paint.toFixed(0)} ms`;
    $("latency").title = `round trip ${roundTrip.toFixed(0)} ms: the server's handling, the transfer (round trip less ` +
      "server time: network, queueing, streaming), then the time from the answer to the painted overlay";
    $("error").hidden = true;
    setStatus("ready", "ready");
  } catch (error) {
    if (streamed.length) { unpaint(streamed); nv.drawScene(); }
    showError(error.message);
  } finally {
    if (STROKES.includes(path)) { state.sent = state.sent.filter((sent) => sent.body !== body); drawMarkers(); }
    state.busy = false;
    const next = state.queue.shift();
    document.body.dataset.queued = String(state.queue.length);
    if (next) await interact(...next);
    else if ($("uncertainty").checked && document.body.dataset.status !== "error") await refreshUncertainty();
  }
}

async function openSession(answer, { keepPrevious = false } = {}) {
  // a new volume starts clean: no queued prompts, read-outs or drawing (nor its 3D rendering) of the
  // last one. Opening a volume closes the previous session; resuming one (keepPrevious) leaves it saved.
  const previous = state.session;
  if (previous && previous.id !== answer.id && !keepPrevious) {
    api(`/api/sessions/${previous.id}`, { method: "DELETE" }).catch(() => {}); // closed and forgotten
  }
  clearUncertainty();
  if (nv.drawBitmap) nv.closeDrawing();
  state.session = { ...answer, geometry: geometry(answer) };
  state.objects = answer.objects;
  state.active = null;
  state.history = {};
  state.corner = null;
  Object.assign(state, { queue: [], pending: null, hover: null, lastPoint: null, paintMs: null, progressEvents: 0, sent: [], drawing: null });
  for (const id of ["latency", "cursor", "crosshair"]) $(id).textContent = "";
  delete document.body.dataset.paintMs;
  document.body.dataset.queued = "0";
  nv.opts.isRadiologicalConvention = $("radiological").checked;
  await nv.loadVolumes([{ url: `/api/sessions/${answer.id}/image.nii.gz`, headers: headers(), name: "image.nii.gz", colormap: "gray" }]);
  nv.setSliceType(nv.sliceTypeMultiplanar);
  const volume = nv.volumes[0];
  state.ras = rasMapping(volume);
  state.labels = new Uint16Array(answer.shape[0] * answer.shape[1] * answer.shape[2]);
  state.labelled = 0;
  document.body.dataset.labelled = "0";
  nv.createEmptyDrawing();
  nv.drawOpacity = Number($("opacity").value);
  // a CT (intensities down to air, about -1000 HU; MR never goes that low) opens in the soft-tissue window, else auto
  const [low, high] = answer.intensity || [0, 0];
  $("window").value = low <= -500 && high > low ? "40,400" : "auto";
  setWindow();
  nv.setDrawColormap(drawLut());  // uploads the volume once, with the window set above
  renderObjects();
  $("dicom-seg").disabled = !answer.dicom;
  $("error").hidden = true;
  const model = answer.model ? `, model ${answer.model}${answer.dims === 2 ? " (2D, slice by slice)" : ""}` : "";
  setStatus("ready", `${answer.name}: ${answer.shape.join("×")} voxels, ${answer.spacing.map((s) => s.toFixed(2)).join("×")} mm, ` +
    `${answer.orientation}${model}`);
  showCrosshair();
  loadSessions();
}

// --- sessions: the server's open and saved sessions, resumed or closed ----------------------------

async function loadSessions() {
  try {
    const answer = await (await api("/api/sessions")).json();
    renderSessions(answer.sessions || []);
  } catch (error) {
    $("sessions").innerHTML = "";
  }
}

function renderSessions(rows) {
  state.sessions = rows;
  const list = $("sessions");
  list.innerHTML = "";
  const ago = (seconds) => {
    const s = Math.max(0, Date.now() / 1000 - seconds);
    return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : s < 129600 ? `${Math.round(s / 3600)} h ago`
      : new Date(seconds * 1000).toLocaleDateString();
  };
  for (const row of rows) {
    const item = document.createElement("li");
    item.dataset.id = row.id;
    item.classList.toggle("current", Boolean(state.session && state.session.id === row.id));
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = row.name;
    name.title = `session ${row.id}`;
    const detail = document.createElement("small");
    const objects = (row.objects || []).length;
    detail.textContent = `${row.model}${row.dims === 2 ? " (2D)" : ""} · ${objects} object${objects === 1 ? "" : "s"} · ` +
      `${ago(row.updated)} · ${row.open ? "open" : "saved"}${item.classList.contains("current") ? " · shown" : ""}`;
    const resume = document.createElement("button");
    resume.textContent = "Resume";
    resume.className = "resume";
    resume.title = "show this session here: its image, objects and label map (the session shown now stays saved)";
    resume.onclick = () => resumeSession(row.id);
    const close = document.createElement("button");
    close.textContent = "Close";
    close.className = "close";
    close.title = "close the session on the server and delete its saved record";
    close.onclick = () => closeSession(row.id);
    const buttons = document.createElement("div");
    buttons.className = "row";
    buttons.append(resume, close);
    item.append(name, detail, buttons);
    list.appendChild(item);
  }
}

async function resumeSession(id) {
  // GET reopens a saved session (same id, objects, labels, undo history); its label map comes as NIfTI
  try {
    setStatus("busy", `resuming session ${id}…`);
    const answer = await (await api(`/api/sessions/${id}`)).json();
    await openSession(answer, { keepPrevious: true });
    setStatus("busy", `resuming session ${id}: its label map…`);
    await loadLabels();
    nv.drawScene();
    setStatus("ready", `resumed ${answer.name} (session ${id}): ${state.labelled} labelled voxels`);
  } catch (error) { showError(error.message); }
}

async function closeSession(id) {
  try {
    await api(`/api/sessions/${id}`, { method: "DELETE" });
    if (state.session && state.session.id === id) {
      state.session = null;
      setStatus("idle", "session closed: open a volume, or resume a session");
    }
  } catch (error) { showError(error.message); }
  await loadSessions();
}

async function loadLabels() {
  // the session's whole label map (GET labels, NIfTI-1, i fastest as the viewer holds it) into the drawing layer
  const response = await api(`/api/sessions/${state.session.id}/labels?format=nii.gz`);
  let bytes = new Uint8Array(await response.arrayBuffer());
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    bytes = new Uint8Array(await new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"))).arrayBuffer());
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const little = view.getInt32(0, true) === 348;
  if (!little && view.getInt32(0, false) !== 348) throw new Error("the label map is not a NIfTI-1 file");
  const dims = [1, 2, 3].map((d) => view.getInt16(40 + 2 * d, little));
  const shape = state.session.shape;
  if (dims.some((n, axis) => n !== shape[axis])) throw new Error(`the label map's shape ${dims} is not the image's ${shape}`);
  const count = shape[0] * shape[1] * shape[2];
  const datatype = view.getInt16(70, little), offset = Math.round(view.getFloat32(108, little));
  const readers = { 2: [1, "getUint8"], 256: [1, "getInt8"], 4: [2, "getInt16"], 512: [2, "getUint16"], 8: [4, "getInt32"], 768: [4, "getUint32"] };
  if (!readers[datatype]) throw new Error(`label map datatype ${datatype} is not supported`);
  const [size, read] = readers[datatype];
  const values = new Uint16Array(count);
  if (datatype === 2) values.set(bytes.subarray(offset, offset + count));
  else for (let n = 0; n < count; n++) values[n] = view[read](offset + n * size, little);
  paintValues([0, 0, 0], shape, values);
}

function applyWindow() {
  if (!nv.volumes.length) return;
  setWindow();
  nv.updateGLVolume();
}

function setWindow() {
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
}

// --- uncertainty: entropy near the object only, with a legend ----------------------------------

async function refreshUncertainty() {
  if (!state.session || state.active == null) return;
  try {
    const answer = await (await api(`/api/sessions/${state.session.id}/uncertainty`, { json: { samples: 8, object: state.active } })).json();
    const region = answer.region;
    const values = await regionValues(region);
    const near = nearObject(region, state.active, UNCERTAINTY_NEAR);
    if (nv.volumes.length < 2) {
      const overlay = niivue.NVImage.zerosLike(nv.volumes[0], "uint8");
      overlay.name = "uncertainty";
      nv.addVolume(overlay);
    }
    const volume = nv.volumes[1];
    volume.img.fill(0);
    const [nx, ny] = state.ras.dims;
    const [i0, j0, k0] = region.start;
    const [i1, j1, k1] = region.stop;
    const floor = Math.round(UNCERTAINTY_MIN_BITS / (answer.scale || 1 / 255));
    let n = 0, shown = 0;
    for (let k = k0; k < k1; k++) {
      for (let j = j0; j < j1; j++) {
        let at = i0 + nx * (j + ny * k);
        for (let i = i0; i < i1; i++, at++, n++) {
          if (near[n] && values[n] >= floor) { volume.img[at] = values[n]; shown++; }
        }
      }
    }
    volume.cal_min = floor;
    volume.cal_max = Math.round(1 / (answer.scale || 1 / 255));
    volume.setColormap("warm");
    volume.opacity = 0.8;
    document.body.dataset.uncertain = String(shown);
    document.body.dataset.uncertainRegion = String(values.length);
    $("legend-low").textContent = String(UNCERTAINTY_MIN_BITS);
    $("legend").hidden = false;
    nv.updateGLVolume();
    $("error").hidden = true;
    setStatus("ready", `uncertainty of object ${state.active}: ${shown} voxels ≥ ${UNCERTAINTY_MIN_BITS} bit near it`);
  } catch (error) {
    showError(`uncertainty: ${error.message}`);
  }
}

function nearObject(region, label, radius) {
  // 1 where a voxel of the region lies within `radius` voxels (a box) of the object: separable dilation
  const size = [0, 1, 2].map((a) => region.stop[a] - region.start[a]);
  const [sx, sy, sz] = size;
  const [nx, ny] = state.ras.dims;
  let mask = new Uint8Array(sx * sy * sz);
  let n = 0;
  for (let k = region.start[2]; k < region.stop[2]; k++) {
    for (let j = region.start[1]; j < region.stop[1]; j++) {
      let at = region.start[0] + nx * (j + ny * k);
      for (let i = 0; i < sx; i++, at++, n++) mask[n] = state.labels[at] === label ? 1 : 0;
    }
  }
  const strides = [1, sx, sx * sy];
  for (let axis = 0; axis < 3; axis++) {
    const out = new Uint8Array(mask.length);
    const length = size[axis], stride = strides[axis];
    for (let base = 0; base < mask.length; base++) {
      if (Math.floor(base / stride) % length !== 0) continue;  // start of a line along `axis`
      let count = 0;
      for (let t = 0; t < Math.min(radius, length); t++) count += mask[base + t * stride];
      for (let t = 0; t < length; t++) {
        if (t + radius < length) count += mask[base + (t + radius) * stride];
        if (t - radius - 1 >= 0) count -= mask[base + (t - radius - 1) * stride];
        out[base + t * stride] = count > 0 ? 1 : 0;
      }
    }
    mask = out;
  }
  return mask;
}

function clearUncertainty() {
  if (nv.volumes.length > 1) nv.removeVolume(nv.volumes[1]);
  $("legend").hidden = true;
  delete document.body.dataset.uncertain;
  delete document.body.dataset.uncertainRegion;
}

// --- clicks on the canvas ----------------------------------------------------------------------

// a press not answered by NiiVue within this long is stale (software WebGL on a loaded machine takes over 1 s)
const PENDING_CLICK_MS = 5000;

$("gl").addEventListener("pointerdown", (event) => {
  if (STROKES.includes(state.mode) && event.button === 0 && !event.altKey && state.session) {
    state.pending = null;
    startStroke(event);
    return;
  }
  state.pending = event.button === 0 && !event.altKey && state.mode !== "navigate"
    ? { shift: event.shiftKey, time: performance.now(), x: event.clientX, y: event.clientY } : null;
});

// --- scribble and lasso: a path drawn with the mouse on one 2D tile --------------------------------

// While a stroke is drawn NiiVue gets none of the mouse's button events (it would move the crosshair).
for (const type of ["mousedown", "mousemove", "mouseup"]) {
  $("canvas-wrap").addEventListener(type, (event) => {
    if (state.drawing || state.swallow) event.stopPropagation();
    if (type === "mouseup" && !state.drawing) state.swallow = false;
  }, true);
}

function canvasPoint(event) {
  const rect = $("gl").getBoundingClientRect();
  const dpr = $("gl").width / rect.width || 1;
  return [(event.clientX - rect.left) * dpr, (event.clientY - rect.top) * dpr];
}

function tileUnder(point) {
  // the 2D tile (axial 0, coronal 1, sagittal 2) under a canvas point, or null
  return (nv.screenSlices || []).find((s) => {
    if (s.axCorSag > 2 || !s.AxyzMxy || s.AxyzMxy.length < 4) return false;
    let [left, top, width, height] = s.leftTopWidthHeight;
    if (width < 0) { left += width; width = -width; }
    return point[0] >= left && point[0] <= left + width && point[1] >= top && point[1] <= top + height;
  }) || null;
}

function strokeVoxel(event, stroke) {
  // the server voxel under the mouse, on the stroke's slice (null outside the stroke's tile)
  const point = canvasPoint(event);
  const tile = tileUnder(point);
  if (!tile || tile.axCorSag !== stroke.tile) return null;
  const frac = nv.canvasPos2frac(point);
  if (!frac || frac[0] < 0) return null;
  const index = serverIndex(nv.frac2vox(frac));
  index[stroke.axis] = stroke.index;
  return index;
}

function startStroke(event) {
  const tile = tileUnder(canvasPoint(event));
  if (!tile) return;
  const axis = state.ras.axis[[2, 1, 0][tile.axCorSag]];
  const stroke = { kind: state.mode, positive: state.sign === "include" && !event.shiftKey, tile: tile.axCorSag, axis,
    index: crosshairIndex()[axis], points: [] };
  const voxel = strokeVoxel(event, stroke);
  if (!voxel) return;
  stroke.points.push(voxel);
  state.drawing = stroke;
  state.swallow = true;
  $("canvas-wrap").classList.add("drawing");
  $("gl").setPointerCapture(event.pointerId);
  drawMarkers();
}

$("gl").addEventListener("pointermove", (event) => {
  const stroke = state.drawing;
  if (!stroke) return;
  const voxel = strokeVoxel(event, stroke);
  const last = stroke.points[stroke.points.length - 1];
  if (voxel && voxel.some((v, axis) => v !== last[axis])) { stroke.points.push(voxel); drawMarkers(); }
});

for (const type of ["pointerup", "pointercancel"]) {
  $("gl").addEventListener(type, (event) => {
    const stroke = state.drawing;
    if (!stroke) return;
    state.drawing = null;
    $("canvas-wrap").classList.remove("drawing");
    if (type === "pointerup") {
      const voxel = strokeVoxel(event, stroke);
      if (voxel) stroke.points.push(voxel);
      finishStroke(stroke);
    }
    drawMarkers();
  });
}

function finishStroke(stroke) {
  let points = thinned(stroke.points, MAX_STROKE_POINTS);
  const body = { points, positive: stroke.positive, coordinates: "voxel", object: state.active };
  drawnOn.set(body, stroke.axis);
  if (stroke.kind === "scribble" && points.length === 1) {  // a click made with the scribble tool
    interact("clicks", body);
    return;
  }
  if (stroke.kind === "lasso") {
    const inPlane = [0, 1, 2].filter((axis) => axis !== stroke.axis);
    points = untangled(points, inPlane);
    if (points.length < 3) {
      setStatus("ready", "lasso: drag around an area on one slice (the outline closes by itself)");
      return;
    }
    body.points = points;
  }
  interact(stroke.kind, body);
}

function thinned(path, limit) {
  // consecutive repeats dropped (and a lasso's closing point), then at most `limit` points spread evenly
  const points = [];
  for (const p of path) {
    const last = points[points.length - 1];
    if (!last || p.some((v, axis) => v !== last[axis])) points.push(p);
  }
  if (points.length <= limit) return points;
  return Array.from({ length: limit }, (_, n) => points[Math.round((n * (points.length - 1)) / (limit - 1))]);
}

function untangled(polygon, [u, v]) {
  // A freehand outline often crosses itself where it closes (or loops): keep the larger part at each
  // crossing until the polygon is simple, as the server accepts only simple polygons.
  let points = polygon.slice();
  while (points.length > 1 && points[0][u] === points[points.length - 1][u] && points[0][v] === points[points.length - 1][v]) points.pop();
  const cross = (o, a, b) => (a[u] - o[u]) * (b[v] - o[v]) - (a[v] - o[v]) * (b[u] - o[u]);
  for (let round = 0; round < 50 && points.length > 3; round++) {
    const n = points.length;
    let found = null;
    for (let i = 0; i < n && !found; i++) {
      const a = points[i], b = points[(i + 1) % n];
      for (let j = i + 2; j < (i === 0 ? n - 1 : n); j++) {
        const c = points[j], d = points[(j + 1) % n];
        if (cross(c, d, a) * cross(c, d, b) < 0 && cross(a, b, c) * cross(a, b, d) < 0) { found = [i, j]; break; }
      }
    }
    if (!found) break;
    const [i, j] = found;
    const inner = points.slice(i + 1, j + 1), outer = points.slice(j + 1).concat(points.slice(0, i + 1));
    points = Math.abs(area(inner, u, v)) >= Math.abs(area(outer, u, v)) ? inner : outer;
  }
  return points;
}

function area(points, u, v) {
  let sum = 0;
  points.forEach((p, n) => { const q = points[(n + 1) % points.length]; sum += p[u] * q[v] - q[u] * p[v]; });
  return sum / 2;
}

$("gl").addEventListener("pointerup", (event) => {
  // NiiVue reports no location change for a click exactly at the crosshair (it moves nothing): such a
  // click, still pending after NiiVue's mousedown, is a prompt at the crosshair when it hit a 2D tile
  const pending = state.pending;
  if (!pending || !state.session || Math.hypot(event.clientX - pending.x, event.clientY - pending.y) > 4) return;
  const rect = $("gl").getBoundingClientRect();
  const dpr = $("gl").width / rect.width || 1;
  const frac = nv.canvasPos2frac([(event.clientX - rect.left) * dpr, (event.clientY - rect.top) * dpr]);
  state.pending = null;
  if (!frac || frac[0] < 0 || performance.now() - pending.time > PENDING_CLICK_MS) return;
  placePrompt(Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3), pending.shift);
});

$("gl").addEventListener("pointermove", (event) => {
  if (!state.session) return;
  const rect = $("gl").getBoundingClientRect();
  const dpr = $("gl").width / rect.width || 1;
  const frac = nv.canvasPos2frac([(event.clientX - rect.left) * dpr, (event.clientY - rect.top) * dpr]);
  if (!frac || frac[0] < 0) { $("cursor").textContent = ""; state.hover = null; return; }
  const mm = Array.from(nv.frac2mm(frac)).slice(0, 3);
  const vox = nv.frac2vox(frac);
  const value = nv.volumes[0].getValue(vox[0], vox[1], vox[2]);
  $("cursor").textContent = `cursor: ${describePoint(mm)}, value ${Number(value).toFixed(0)}`;
  if (state.corner) { state.hover = mm; drawMarkers(); }
});

function describePoint(mm) {
  const index = rasToIndex(mm).map((v) => Math.round(v));
  return `voxel (${index.join(", ")}) · RAS (${mm.map((v) => v.toFixed(1)).join(", ")}) mm`;
}

function showCrosshair() {
  if (!state.session || !nv.volumes.length) return;
  const mm = Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3);
  const g = state.session.geometry;
  const index = rasToIndex(mm).map((v) => Math.round(v));
  $("crosshair").textContent = `axial slice ${index[g.axial] + 1} / ${g.shape[g.axial]} · ${describePoint(mm)}`;
}

nv.onLocationChange = (location) => {
  showCrosshair();
  const pending = state.pending;
  state.pending = null;
  if (!pending || performance.now() - pending.time > PENDING_CLICK_MS || !state.session || !location.mm) return;
  placePrompt(Array.from(location.mm).slice(0, 3), pending.shift);
};

function placePrompt(point, shift) {
  // a click at `point` (RAS mm): a box corner in box mode, else an include / exclude click
  state.lastPoint = point;
  if (state.mode === "box") {
    if (!state.corner) {
      state.corner = point;
      state.hover = null;
      setStatus("ready", `box: first corner at ${point.map((v) => v.toFixed(1)).join(", ")} mm; click the opposite corner`);
      drawMarkers();
      return;
    }
    const corners = boxCorners(state.corner, point);
    state.corner = null;
    state.hover = null;
    if (corners) interact("box", { corner_a: corners[0], corner_b: corners[1], coordinates: "voxel", object: state.active });
    return;
  }
  const positive = state.sign === "include" && !shift;
  interact("clicks", { points: [point], positive, coordinates: "ras", object: state.active });
}

function boxCorners(a, b) {
  // Two clicked corners (RAS mm) -> two server voxel corners. Corners on one slice make a flat box:
  // a 2D model gets it as is (it segments that slice and propagates); for a 3D model it becomes a
  // slab `box depth` mm thick (0: as deep as the rectangle's mean side), centred on the slice.
  const g = state.session.geometry;
  const low = rasToIndex(a), high = rasToIndex(b);
  for (let axis = 0; axis < 3; axis++) {
    if (low[axis] > high[axis]) [low[axis], high[axis]] = [high[axis], low[axis]];
  }
  const extent = [0, 1, 2].map((axis) => Math.round(high[axis]) - Math.round(low[axis]));
  const flat = [0, 1, 2].filter((axis) => extent[axis] === 0);
  if (flat.length > 1) {
    showError("the two box corners lie on one line: click opposite corners of a rectangle");
    return null;
  }
  if (flat.length === 1 && state.session.dims !== 2) {
    const axis = flat[0];
    const sides = [0, 1, 2].filter((other) => other !== axis).map((other) => (high[other] - low[other]) * g.spacing[other]);
    const depth = Number($("box-depth").value) || (sides[0] + sides[1]) / 2;
    const half = Math.max(depth / 2 / g.spacing[axis], 1);
    const centre = Math.round(low[axis]);
    low[axis] = Math.max(0, centre - half);
    high[axis] = Math.min(g.shape[axis] - 1, centre + half);
  }
  const clip = (index) => index.map((v, axis) => Math.min(Math.max(v, 0), g.shape[axis] - 1));
  return [clip(low), clip(high)];
}

// --- controls ---------------------------------------------------------------------------------

function setMode(mode) {
  // the tool: click, scribble, lasso, box or navigate
  state.mode = mode;
  state.corner = null;
  state.hover = null;
  state.drawing = null;
  for (const button of document.querySelectorAll("#tools button")) button.classList.toggle("active", button.dataset.mode === mode);
  drawMarkers();
}

function setSign(sign) {
  // include or exclude, for clicks, scribbles and lassos (a box or navigate tool goes back to clicks)
  state.sign = sign;
  for (const button of document.querySelectorAll("#signs button")) button.classList.toggle("active", button.dataset.sign === sign);
  if (state.mode === "box" || state.mode === "navigate") setMode("click");
}

for (const button of document.querySelectorAll("#tools button")) button.onclick = () => setMode(button.dataset.mode);
for (const button of document.querySelectorAll("#signs button")) button.onclick = () => setSign(button.dataset.sign);
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
    nv.drawScene();
  } catch (error) { showError(error.message); }
};
$("window").onchange = applyWindow;
$("radiological").onchange = () => nv.setRadiologicalConvention($("radiological").checked);
$("render").onchange = () => {  // the 3D rendering tile (the costliest part of a draw with software WebGL)
  nv.opts.multiplanarShowRender = $("render").checked ? niivue.SHOW_RENDER.ALWAYS : niivue.SHOW_RENDER.NEVER;
  nv.drawScene();
};
$("opacity").oninput = () => { nv.drawOpacity = Number($("opacity").value); nv.drawScene(); };
$("uncertainty").onchange = () => {
  if ($("uncertainty").checked) refreshUncertainty();
  else { clearUncertainty(); nv.updateGLVolume(); }
};

// Shortcuts work whatever has focus, except while typing in a text field.
document.addEventListener("keydown", (event) => {
  const target = event.target;
  const typing = (target.tagName === "INPUT" && !["checkbox", "radio", "range", "button", "file"].includes(target.type)) ||
    target.tagName === "TEXTAREA" || target.isContentEditable;
  if (typing) return;
  const key = event.key.toLowerCase();
  const command = event.ctrlKey || event.metaKey;
  let handled = true;
  if (command && key === "z" && !event.shiftKey) $("undo").click();
  else if (command && (key === "y" || (key === "z" && event.shiftKey))) $("redo").click();
  else if (command || event.altKey) handled = false;
  else if (key === "i") setSign("include");
  else if (key === "e") setSign("exclude");
  else if (key === "c") setMode("click");
  else if (key === "s") setMode("scribble");
  else if (key === "l") setMode("lasso");
  else if (key === "b") setMode("box");
  else if (key === "v") setMode("navigate");
  else if (key === "n") $("new-object").click();
  else if (key === "u") { $("uncertainty").checked = !$("uncertainty").checked; $("uncertainty").onchange(); }
  else if (key === "escape") { state.corner = null; state.hover = null; state.drawing = null; drawMarkers(); }
  else handled = false;
  if (handled) { event.preventDefault(); event.stopPropagation(); }
}, true);

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

function modelQuery() {
  return $("model").value ? `?model=${encodeURIComponent($("model").value)}` : "";
}

$("open").onclick = async () => {
  const path = $("files").value;
  if (!path) return;
  try {
    setStatus("busy", `opening ${path}…`);
    await openSession(await (await api("/api/sessions", { json: { path, model: $("model").value || null } })).json());
  } catch (error) { showError(error.message); }
};
$("upload").onchange = async () => {
  const file = $("upload").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  try {
    setStatus("busy", `uploading ${file.name}…`);
    await openSession(await (await api(`/api/sessions/upload${modelQuery()}`, { method: "POST", body: form })).json());
  } catch (error) { showError(error.message); }
};
$("apikey").value = localStorage.getItem("fastsam3d-api-key") || "";
$("apikey").onchange = () => { localStorage.setItem("fastsam3d-api-key", $("apikey").value); loadFiles(); loadModels(); };

async function loadFiles() {
  try {
    const { files } = await (await api("/api/files")).json();
    $("files").innerHTML = "";
    for (const name of files) $("files").appendChild(new Option(name, name));
  } catch (error) {
    $("files").innerHTML = "";
    if (!/without --data/.test(error.message)) showError(error.message);
  }
}

async function loadModels() {
  // {"default": name, "models": [{name, dims, prompts, available, description}]} or, from older
  // servers, {"models": [name, ...]}: every model is listed, unavailable ones greyed out.
  try {
    const answer = await (await api("/api/models")).json();
    state.models = (answer.models || []).map((m) => (typeof m === "string" ? { name: m, available: true } : m));
    $("model").innerHTML = "";
    for (const m of state.models) {
      const detail = [m.dims ? `${m.dims}D` : "", m.prompts && !m.prompts.includes("point") ? "box first" : "",
        m.available === false ? "not installed" : ""].filter(Boolean).join(", ");
      const option = new Option(detail ? `${m.name} (${detail})` : m.name, m.name);
      option.disabled = m.available === false;
      option.title = m.description || "";
      $("model").appendChild(option);
    }
    const preferred = answer.default || (state.models[0] && state.models[0].name);
    if (preferred) $("model").value = preferred;
  } catch (error) {
    $("model").innerHTML = "";
  }
}

setInterval(() => {
  if (!state.session) return;
  api(`/api/sessions/${state.session.id}/heartbeat`, { method: "POST" }).catch((error) => { if (error.gone) showError(error.message); });
}, 60000);
$("sessions-refresh").onclick = () => loadSessions();

// Software WebGL (SwiftShader, llvmpipe: no GPU) renders the 3D tile in 0.6-0.9 s at every draw, and
// each click's paint waits for it: there the tile starts off (the "3D view" box turns it on).
function softwareRenderer(gl) {
  const info = gl.getExtension("WEBGL_debug_renderer_info");
  const name = String(info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER));
  return /swiftshader|llvmpipe|softpipe|software|basic render/i.test(name) ? name : null;
}

function chooseRenderTile() {
  const software = softwareRenderer(nv.gl);
  window.fastsam3d.softwareRenderer = software;
  if (!software) return;
  $("render").checked = false;
  nv.opts.multiplanarShowRender = niivue.SHOW_RENDER.NEVER;
  $("render").parentElement.title += ` (off at start: this browser draws WebGL in software, ${software}, ` +
    "where the 3D tile costs most of a click's paint)";
}

(async () => {
  await nv.attachTo("gl");
  chooseRenderTile();
  await Promise.all([loadFiles(), loadModels(), loadSessions()]);
  setStatus("idle");
})();
