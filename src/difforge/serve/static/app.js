// difforge web page: no build step, no libraries. Talks to the JSON API of this server;
// progress arrives as server-sent events (POST + `Accept: text/event-stream`, read with fetch).
"use strict";

const $ = (id) => document.getElementById(id);
const imageCanvas = $("image"), maskCanvas = $("mask");
const imageCtx = imageCanvas.getContext("2d"), maskCtx = maskCanvas.getContext("2d");
let model = null;        // GET /v1/model
let current = null;      // base64 PNG of the image shown (the result to edit or download)
let maskPixels = 0;      // painted mask pixels
let busy = false;

function setState(state, text, isError = false) {
  document.body.dataset.state = state;
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "muted";
}

function headers(extra = {}) {
  const token = $("token").value.trim();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function loadModel() {
  const res = await fetch("/v1/model", { headers: headers() });
  if (res.status === 401) {
    $("token-row").hidden = false;
    setState("locked", "This server needs a token: enter it, then press Generate.", true);
    return false;
  }
  if (!res.ok) throw new Error(`GET /v1/model: ${res.status}`);
  model = await res.json();
  const size = model.image_size;
  for (const c of [imageCanvas, maskCanvas]) { c.width = size; c.height = size; }
  $("model-name").textContent = `${model.name}: ${model.preset}, ${size}×${size}×${model.channels}` +
    (model.training_steps != null ? `, ${model.training_steps} training steps` : "");
  const klass = $("klass");
  klass.innerHTML = "";
  klass.add(new Option("none (unconditional)", ""));
  (model.class_names || []).forEach((name, i) => klass.add(new Option(`${i}: ${name}`, String(i))));
  if (model.num_classes) klass.value = "0";
  klass.disabled = !model.num_classes;
  // a text-to-image model: a prompt (prefilled with the model's first example) instead of a class
  const text = Boolean(model.takes_text);
  $("klass-row").hidden = text;
  $("prompt-row").hidden = !text;
  $("negative-row").hidden = !text;
  if (text) {
    const examples = $("prompt-examples");
    examples.innerHTML = "";
    for (const p of model.prompts || []) examples.append(new Option(p, p));
    if (!$("prompt").value) $("prompt").value = (model.prompts || [""])[0];
    for (const id of ["prompt", "negative"]) $(id).maxLength = model.limits.max_prompt_chars;
  }
  // a video model: the clip is shown as an <img> (an animated GIF); images-only edits are hidden
  const clips = Boolean(model.takes_clips);
  $("canvas-wrap").hidden = clips;
  $("clip").hidden = !clips;
  $("edit").hidden = clips;
  $("edit-title").hidden = clips;
  if (clips) $("model-name").textContent += `, clips of ${model.frames} frames`;
  $("cfg").disabled = !model.num_classes && !text;
  if (model.default_cfg != null) $("cfg").value = model.default_cfg;
  const sampler = $("sampler");
  sampler.innerHTML = "";
  for (const name of Object.keys(model.samplers)) sampler.add(new Option(name, name));
  sampler.value = model.default_sampler in model.samplers ? model.default_sampler : Object.keys(model.samplers)[0];
  sampler.onchange = () => { $("steps").value = Math.min(model.samplers[sampler.value].default_steps, model.limits.max_steps); };
  sampler.onchange();
  $("steps").max = model.limits.max_steps;
  setState("idle", "Choose settings and press Generate.");
  return true;
}

// settings shared by every route (a text model's edits run with the empty prompt: no prompt, no cfg)
function settings() {
  const body = { sampler: $("sampler").value, steps: Number($("steps").value), seed: Number($("seed").value) };
  if (model.num_classes && $("klass").value !== "") body.class = Number($("klass").value);
  if (model.num_classes) body.cfg = Number($("cfg").value);
  return body;
}

function generateSettings() {
  const body = settings();
  if (model.takes_text) {
    body.prompt = $("prompt").value;
    const negative = $("negative").value;
    if (negative) body.negative_prompt = negative;
    body.cfg = Number($("cfg").value);
  }
  return body;
}

async function drawB64(b64) {
  const img = new Image();
  img.src = `data:image/png;base64,${b64}`;
  await img.decode();
  imageCtx.clearRect(0, 0, imageCanvas.width, imageCanvas.height);
  imageCtx.drawImage(img, 0, 0, imageCanvas.width, imageCanvas.height);
}

function showClip(src) {
  const clip = $("clip");
  clip.src = src;
  clip.dataset.kind = src.startsWith("data:image/gif") ? "gif" : "png";
}

// POST a request and read its server-sent events: `progress` (intermediate images), then
// `result` (the final response) or `error`.
async function stream(path, body, onProgress) {
  const res = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
  });
  if (!res.ok) {
    const err = await res.json().catch(() => ({ detail: res.statusText }));
    throw new Error(`${res.status}: ${err.detail}`);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", result = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = /^event: (.*)$/m.exec(chunk)?.[1];
      const data = JSON.parse(/^data: (.*)$/m.exec(chunk)?.[1] || "null");
      if (event === "progress") await onProgress(data);
      else if (event === "result") result = data;
      else if (event === "error") throw new Error(`${data.status}: ${data.detail}`);
    }
  }
  if (!result) throw new Error("the server closed the stream without a result");
  return result;
}

async function run(label, path, body) {
  if (busy) return;
  if (!model && !(await loadModel())) return;
  busy = true;
  updateButtons();
  const started = performance.now();
  let frames = 0;
  setState("running", `${label}…`);
  $("progress").value = 0;
  try {
    const result = await stream(path, body, async (p) => {
      frames += 1;
      imageCanvas.dataset.frames = String(frames);
      $("progress").value = p.step / p.steps;
      setState("running", `${label}: step ${p.step} / ${p.steps}`);
      if (model.takes_clips) showClip(`data:image/png;base64,${p.images[0]}`);  // the frames in a row
      else await drawB64(p.images[0]);
    });
    const link = $("download");
    if (result.videos) {  // a clip: its GIF animates in the <img>
      current = null;
      showClip(`data:image/gif;base64,${result.videos[0]}`);
      link.href = $("clip").src;
      link.download = `difforge-${path.split("/").pop()}-seed${result.seeds[0]}.gif`;
      link.textContent = "Download GIF";
    } else {
      current = result.images[0];
      await drawB64(current);
      link.href = `data:image/png;base64,${current}`;
      link.download = `difforge-${path.split("/").pop()}-seed${result.seeds[0]}.png`;
      link.textContent = "Download PNG";
    }
    $("progress").value = 1;
    link.hidden = false;
    $("seed-used").textContent = `seed ${result.seeds[0]}, ${result.sampler}, ${result.steps} steps` +
      (result.cfg != null ? `, cfg ${result.cfg}` : "") +
      (result.prompts ? `, prompt ${JSON.stringify(result.prompts[0])}` : "");
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    imageCanvas.dataset.frames = String(frames);
    setState("done", `${label}: done in ${secs} s (${frames} intermediate images).`);
  } catch (e) {
    setState("error", `${label} failed: ${e.message}`, true);
  } finally {
    busy = false;
    updateButtons();
  }
}

function updateButtons() {
  $("generate").disabled = busy;
  if (model && model.takes_clips) return;  // clips: no edits
  $("inpaint").disabled = busy || !current || maskPixels === 0;
  $("restore").disabled = busy || !current;
}

// ---------------------------------------------------------------- the mask
function maskPNG() {
  return maskCanvas.toDataURL("image/png").split(",")[1];
}

function countMask() {
  const data = maskCtx.getImageData(0, 0, maskCanvas.width, maskCanvas.height).data;
  let n = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] >= 128) n += 1;
  return n;
}

function toMask(ev) {
  const r = maskCanvas.getBoundingClientRect();
  return [((ev.clientX - r.left) / r.width) * maskCanvas.width, ((ev.clientY - r.top) / r.height) * maskCanvas.height];
}

// A square brush stamped along the stroke, in the model's pixels (no anti-aliasing: what
// you see is the mask that is sent).
function stamp(x, y) {
  const side = Math.max(1, Number($("brush").value));
  maskCtx.fillStyle = "#ff2a2a";
  maskCtx.fillRect(Math.round(x - side / 2), Math.round(y - side / 2), side, side);
}

let last = null;
function paint(ev) {
  const [x, y] = toMask(ev);
  const [x0, y0] = last || [x, y];
  const n = Math.max(1, Math.ceil(Math.hypot(x - x0, y - y0) * 2));
  for (let k = 1; k <= n; k += 1) stamp(x0 + ((x - x0) * k) / n, y0 + ((y - y0) * k) / n);
  last = [x, y];
}

maskCanvas.addEventListener("pointerdown", (ev) => { last = null; maskCanvas.setPointerCapture(ev.pointerId); paint(ev); });
maskCanvas.addEventListener("pointermove", (ev) => { if (last) paint(ev); });
for (const type of ["pointerup", "pointercancel"]) {
  maskCanvas.addEventListener(type, () => {
    last = null;
    maskPixels = countMask();
    maskCanvas.dataset.pixels = String(maskPixels);
    updateButtons();
  });
}

function clearMask() {
  maskCtx.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
  maskPixels = 0;
  maskCanvas.dataset.pixels = "0";
  updateButtons();
}

// ---------------------------------------------------------------- wiring
$("generate").onclick = () => run("Generate", "/v1/generate", generateSettings());
$("inpaint").onclick = () => {
  const body = { ...settings(), image: current, mask: maskPNG(), method: $("method").value };
  body.sampler = "ddpm";  // RePaint's stochastic steps
  body.steps = Math.min(body.steps, 50);
  run("Inpaint", "/v1/inpaint", body);
};
$("restore").onclick = () => run("Restore", "/v1/restore", { ...settings(), image: current, strength: Number($("strength").value) });
for (const id of ["prompt", "negative"]) {
  $(id).onkeydown = (ev) => { if (ev.key === "Enter" && !busy) $("generate").click(); };
}
$("dice").onclick = () => { $("seed").value = Math.floor(Math.random() * 2 ** 31); };
$("clear-mask").onclick = clearMask;
$("strength").oninput = () => { $("strength-value").textContent = $("strength").value; };
$("token").onchange = () => loadModel().catch((e) => setState("error", e.message, true));
$("upload").onchange = async () => {
  const file = $("upload").files[0];
  if (!file || !model) return;
  const img = new Image();
  img.src = URL.createObjectURL(file);
  try {
    await img.decode();
  } catch {
    setState("error", `${file.name} is not an image this browser can read`, true);
    return;
  }
  imageCtx.fillStyle = "#fff";  // transparent pixels on white, as the server and training read them
  imageCtx.fillRect(0, 0, imageCanvas.width, imageCanvas.height);
  imageCtx.drawImage(img, 0, 0, imageCanvas.width, imageCanvas.height);
  current = imageCanvas.toDataURL("image/png").split(",")[1];
  setState("idle", `Opened ${file.name}, scaled to ${imageCanvas.width}×${imageCanvas.height}.`);
  updateButtons();
};

loadModel().catch((e) => setState("error", `cannot reach the server: ${e.message}`, true));
