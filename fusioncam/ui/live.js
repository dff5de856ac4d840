// Live map card: Fusion-CAM's last step (METHOD.md §4) redone in the page, so λ, the colour map and
// the opacity repaint at frame rate with no server call. Run by Gradio's gr.HTML as `js_on_load`,
// i.e. as the body of a function of (element, trigger, props, server, upload, watch); CONFIG is
// prepended by fusioncam/ui/live.py. The payload (props.value) comes from fusioncam.live.live_payload.
//
//   L1, L2 (kept, float32)  →  S = clip(1 − λ|L1 − L2|, 0, 1)
//                              F = S·max(L1, L2) + (1 − S)(L1 + L2)/2,   Fusion-CAM = N(F)
//
// The card keeps the highest generation it has drawn (or been blanked to) and ignores any payload
// from a lower one. The fusion card tells the server the λ it shows with ONE custom event,
// trigger('commit', {strength, generation, key}), CONFIG.debounceMs after the last move of the
// slider (input or change: a drag, a key press or a held key, a typed number), and never for a λ
// the server already has, so the last value always arrives and a drag costs one request.
// The controls followed: #strength, #colormap and #opacity, unless CONFIG.controls names others.
const IDS = { strength: "strength", colormap: "colormap", opacity: "opacity", ...(CONFIG.controls || {}) };
const root = element.querySelector(".fc-live");
const canvas = root.querySelector(".fc-canvas");
const empty = root.querySelector(".fc-empty");
const ramp = root.querySelector(".fc-ramp");
const note = root.querySelector(".fc-note");
const label = root.querySelector(".fc-label");
const labelText = label.textContent;
const luts = {};
for (const [name, hex] of Object.entries(CONFIG.luts)) {
  luts[name] = Uint8Array.from(hex.match(/../g), (pair) => parseInt(pair, 16));
}
const state = {
  shown: -Infinity,   // the highest generation drawn or blanked
  token: 0,           // the latest accepted payload; an older decode finishing late is dropped
  data: null,         // the decoded payload being shown
  strength: null,     // λ in use
  colormap: null,
  opacity: null,
  fused: null,        // N(F) at model resolution (Float64Array), or S for the agreement card
  share: null,        // share of pixels with S < threshold
  committed: null,    // {key, strength}: what the server is known to hold
  timer: null,
  paints: 0,
  latencies: [],      // ms from an input event to the frame after its repaint (benchmarks/live_tuning.py)
};

function control(id, type) {
  return document.querySelector(`#${id} input${type ? `[type=${type}]` : ""}`);
}

function number(text, fallback) {
  const value = parseFloat(text);
  return Number.isFinite(value) ? value : fallback;
}

function sliderStrength(fallback) {
  const range = control(IDS.strength, "range");
  return range ? number(range.value, fallback) : fallback;
}

function clampToSlider(value) {
  const range = control(IDS.strength, "range");
  if (!range) return Math.max(0, value);
  return Math.min(number(range.max, Infinity), Math.max(number(range.min, 0), value));
}

function currentColormap(fallback) {
  const box = control(IDS.colormap);
  if (!box) return fallback;
  const text = box.value.trim();
  const name = CONFIG.labels[text] ?? text.split(/\s/)[0].toLowerCase();
  return name in luts ? name : fallback;
}

function currentOpacity(fallback) {
  const range = control(IDS.opacity, "range");
  return range ? Math.min(1, Math.max(0, number(range.value, fallback))) : fallback;
}

function decodeFloats(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);   // little-endian, as every browser's typed arrays are
}

// cv2.resize INTER_LINEAR's source coordinates: half-pixel centres, clamped at the borders.
function axis(source, target) {
  const low = new Int32Array(target), high = new Int32Array(target), weight = new Float32Array(target);
  const scale = source / target;
  for (let i = 0; i < target; i++) {
    let position = (i + 0.5) * scale - 0.5;
    let index = Math.floor(position);
    let fraction = position - index;
    if (index < 0) { index = 0; fraction = 0; }
    if (index >= source - 1) { index = source - 1; fraction = 0; }
    low[i] = index; high[i] = Math.min(index + 1, source - 1); weight[i] = fraction;
  }
  return { low, high, weight };
}

async function decode(payload) {
  const picture = new Image();
  picture.src = payload.image;
  await picture.decode();
  const width = picture.naturalWidth, height = picture.naturalHeight;
  const scratch = document.createElement("canvas");
  scratch.width = width; scratch.height = height;
  const context = scratch.getContext("2d", { willReadFrequently: true });
  context.drawImage(picture, 0, 0);
  let photo = context.getImageData(0, 0, width, height).data;
  if (CONFIG.kind === "agreement") {   // over a grey copy (Pillow's luma), as render.agreement_overlay
    photo = photo.slice();
    for (let o = 0; o < photo.length; o += 4) {
      photo[o] = photo[o + 1] = photo[o + 2] = (photo[o] * 19595 + photo[o + 1] * 38470 + photo[o + 2] * 7471 + 0x8000) >> 16;
    }
  }
  return {
    generation: payload.generation, key: payload.key, width: payload.width, height: payload.height,
    l1: decodeFloats(payload.l1), l2: decodeFloats(payload.l2), strength: payload.strength,
    colormap: payload.colormap, opacity: payload.opacity, photo, photoWidth: width, photoHeight: height,
    xs: axis(payload.width, width), ys: axis(payload.height, height),
  };
}

// S and N(F) at the model's resolution, in double precision (the library's float32 values agree
// to ~1e-7, well inside one 8-bit level).
function compute(data, strength) {
  const n = data.width * data.height, l1 = data.l1, l2 = data.l2;
  const fused = new Float64Array(n), agreement = new Float64Array(n);
  let low = Infinity, high = -Infinity, disagree = 0;
  for (let i = 0; i < n; i++) {
    const a = l1[i], b = l2[i];
    let s = 1 - strength * Math.abs(a - b);
    s = s < 0 ? 0 : s > 1 ? 1 : s;
    const f = s * (a > b ? a : b) + (1 - s) * (a + b) / 2;
    fused[i] = f; agreement[i] = s;
    if (f < low) low = f;
    if (f > high) high = f;
    if (s < CONFIG.threshold) disagree++;
  }
  const peak = high - low;
  for (let i = 0; i < n; i++) fused[i] = peak > 0 ? (fused[i] - low) / peak : 0;
  return { fused, agreement, share: disagree / n };
}

// Upsample `values` (model resolution) to the photo bilinearly, colour each pixel with
// table[round(255·v)] and blend: (1 − opacity)·photo + opacity·colour (render.overlay's formula).
function paintOverlay(data, values, table, opacity) {
  const width = data.photoWidth, height = data.photoHeight, w = data.width;
  const picture = new ImageData(width, height), out = picture.data, photo = data.photo;
  const { low: x0, high: x1, weight: wx } = data.xs, { low: y0, high: y1, weight: wy } = data.ys;
  const keep = 1 - opacity;
  for (let y = 0; y < height; y++) {
    const top = y0[y] * w, bottom = y1[y] * w, fy = wy[y];
    for (let x = 0; x < width; x++) {
      const fx = wx[x];
      const upper = values[top + x0[x]] * (1 - fx) + values[top + x1[x]] * fx;
      const lower = values[bottom + x0[x]] * (1 - fx) + values[bottom + x1[x]] * fx;
      let level = Math.floor((upper * (1 - fy) + lower * fy) * 255 + 0.5);
      level = level < 0 ? 0 : level > 255 ? 255 : level;
      const o = (y * width + x) * 4, c = level * 3;
      out[o] = photo[o] * keep + table[c] * opacity;
      out[o + 1] = photo[o + 1] * keep + table[c + 1] * opacity;
      out[o + 2] = photo[o + 2] * keep + table[c + 2] * opacity;
      out[o + 3] = 255;
    }
  }
  return picture;
}

function paintRamp(table) {
  const context = ramp.getContext("2d");
  const strip = new ImageData(256, 1);
  for (let i = 0; i < 256; i++) {
    strip.data.set([table[3 * i], table[3 * i + 1], table[3 * i + 2], 255], 4 * i);
  }
  context.putImageData(strip, 0, 0);
}

function percent(share) {
  return `${(100 * share).toFixed(share < 0.1 ? 1 : 0)} %`;
}

function repaint() {
  const data = state.data;
  if (!data) return;
  const { fused, agreement, share } = compute(data, state.strength);
  const agreementCard = CONFIG.kind === "agreement";
  const colormap = agreementCard ? CONFIG.agreementColormap : state.colormap;
  state.fused = agreementCard ? agreement : fused;
  state.share = share;
  const context = canvas.getContext("2d");
  context.putImageData(paintOverlay(data, state.fused, luts[colormap], state.opacity), 0, 0);
  paintRamp(luts[colormap]);
  const lambda = `λ = ${+state.strength.toFixed(3)}`;
  note.textContent = agreementCard
    ? `The two views disagree (S < ${CONFIG.threshold}, left of the mark) on ${percent(share)} of the image at ${lambda}.`
    : `Drawn in your browser at ${lambda} (${colormap}).`;
  state.paints++;
  Object.assign(root.dataset, {
    state: "drawn", generation: data.generation, key: data.key, strength: state.strength, colormap,
    opacity: state.opacity, disagreement: share, paints: state.paints,
  });
}

// A partial (anytime) payload names its progress in the card's label; the card that owns the page's
// #explain-state (CONFIG.stateElement) says there whether the maps on show are "partial" or "done".
function showProgress(progress) {
  const partial = progress && !progress.final;
  label.textContent = partial
    ? `${labelText} · Score-CAM: ${Math.floor(100 * progress.scorecam_fraction)} % of channels` : labelText;
  root.dataset.progress = progress ? (progress.final ? "final" : String(progress.scorecam_fraction)) : "";
  const target = CONFIG.stateElement && document.getElementById(CONFIG.stateElement);
  if (target) target.textContent = progress ? (progress.final ? "done" : "partial") : "";
}

function clear(generation) {
  state.data = null; state.fused = null; state.share = null;
  canvas.width = 0; canvas.height = 0;
  canvas.hidden = true; empty.hidden = false; note.textContent = "";
  showProgress(null);
  root.dataset.state = "empty";
  if (generation !== undefined) root.dataset.generation = generation;
  delete root.dataset.key;
}

function flushCommit() {
  clearTimeout(state.timer);
  state.timer = null;
  const data = state.data;
  if (CONFIG.kind !== "fusion" || !data) return;
  const known = state.committed;
  if (known && known.key === data.key && Math.abs(known.strength - state.strength) < 1e-9) return;
  state.committed = { key: data.key, strength: state.strength };
  trigger("commit", { strength: state.strength, generation: data.generation, key: data.key });
}

function scheduleCommit() {
  clearTimeout(state.timer);
  state.timer = setTimeout(flushCommit, CONFIG.debounceMs);
}

async function show(payload) {
  if (!payload || typeof payload !== "object") { state.token++; clear(); return; }
  const generation = Number(payload.generation);
  if (!(generation >= state.shown)) return;   // a late payload of an older explanation
  state.shown = generation;
  const token = ++state.token;
  if (!payload.l1) { clear(generation); return; }
  if (state.data && state.data.generation !== generation) clear(generation);
  const data = state.data && state.data.key === payload.key
    ? { ...state.data, strength: payload.strength } : await decode(payload);
  if (token !== state.token) return;
  state.data = data;
  state.strength = clampToSlider(sliderStrength(data.strength));
  state.colormap = currentColormap(data.colormap);
  state.opacity = currentOpacity(data.opacity);
  state.committed = { key: data.key, strength: data.strength };
  if (canvas.width !== data.photoWidth || canvas.height !== data.photoHeight) {
    canvas.width = data.photoWidth; canvas.height = data.photoHeight;
  }
  canvas.hidden = false; empty.hidden = true;
  showProgress(payload.progress ?? { scorecam_fraction: 1, final: true });
  repaint();
  if (Math.abs(state.strength - data.strength) > 1e-9) scheduleCommit();   // the slider moved meanwhile
}

function timed(event) {
  const started = event.timeStamp;
  repaint();
  requestAnimationFrame(() => {
    state.latencies.push(performance.now() - started);
    if (state.latencies.length > 1000) state.latencies.shift();
  });
}

function onControl(event) {
  if (!root.isConnected) { for (const type of EVENTS) document.removeEventListener(type, onControl, true); return; }
  const target = event.target;
  if (!(target instanceof Element)) return;
  if (target.closest(`#${IDS.strength}`) && target.matches("input") && (event.type === "input" || event.type === "change")) {
    const value = parseFloat(target.value);
    if (!Number.isFinite(value)) return;
    const strength = clampToSlider(value);
    const moved = strength !== state.strength;
    state.strength = strength;
    if (moved && state.data) timed(event);
    scheduleCommit();
  } else if (target.closest(`#${IDS.opacity}`) && target.matches("input") && (event.type === "input" || event.type === "change")) {
    state.opacity = currentOpacity(state.opacity);
    if (state.data) timed(event);
  } else if (target.closest(`#${IDS.colormap}`) || event.type === "click" || event.type === "keydown") {
    // A dropdown sets its box's text without an event of its own: look once the page has settled.
    setTimeout(() => {
      const colormap = currentColormap(state.colormap);
      if (colormap !== state.colormap) { state.colormap = colormap; if (state.data) repaint(); }
    }, 0);
  }
}

const EVENTS = ["input", "change", "click", "keydown", "focusout"];
for (const type of EVENTS) document.addEventListener(type, onControl, true);

root.fusioncamLive = {
  // The page's map at the model's resolution as 8-bit levels round(255·v), row-major: N(F) on the
  // fusion card, S on the agreement card.
  levels: () => (state.fused ? Array.from(state.fused, (v) => Math.round(255 * v)) : null),
  share: () => state.share,
  latencies: state.latencies,
};
clear();
watch("value", () => show(props.value));
show(props.value);
