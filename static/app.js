// Cosmic Rover Mission Control: the dashboard's client. An ES module, no build step; its live links go
// through the server's own browser client, rover-stream.js (mapped to "rover-stream" by the page's import
// map, so that it is found under whatever prefix the server is mounted at).
//
// Streams:
//   - one multiplexed EventSource (subscribe): rover.telemetry, server.metrics and broadcast
//   - one WebSocket for the comms room (RoomClient): /ws/comms/<room>?user=<name>
//   - the rover image: fetch + ReadableStream reader, shown progressively through Blob URLs
// Every piece of text that comes from a user or the network goes into the page through textContent.
import { RoomClient, subscribe } from "rover-stream";

const ROOT = (document.body && document.body.dataset.root) || "";
const SSE_CHANNELS = ["rover.telemetry", "server.metrics", "broadcast"];
// The event names published on them ("message": published without one).
const SSE_EVENTS = ["message", "telemetry", "metrics", "broadcast", "join", "leave"];
const CHART_POINTS = 300;        // points per telemetry chart
const TRACK_POINTS = 3000;       // telemetry records kept for the track map
const SPARK_POINTS = 90;         // samples per metrics sparkline
const BROADCAST_KEEP = 50;
const CHAT_DOM_KEEP = 500;
const IMAGE_STEP = 256 * 1024;   // show the partial image every this many bytes
const MAX_USER = 64;
const MAX_TEXT = 4000;
const ROOM_RE = /^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$/;
const STATUSES = ["driving", "charging", "sampling", "idle", "sleeping"];

const $ = (id) => document.getElementById(id);
const noop = () => {};

// ------------------------------------------------------------------ test hooks
const mission = {
  sse: "connecting",
  ws: "connecting",
  room: null,
  ticks: [],
  lastTelemetry: null,
  telemetryEvents: 0,
  metricsEvents: 0,
  lastMetrics: null,
  broadcasts: [],
  chat: [],
  members: [],
  imageBytes: 0,
  imageTotal: null,
  imageDone: false,
  imageSha256: null,
  joinRoom: null,
  sendChat: null,
};
window.mission = mission;

// ------------------------------------------------------------------ small helpers
const isNum = (v) => typeof v === "number" && Number.isFinite(v);
function fixed(v, digits) {
  return isNum(v) ? v.toFixed(digits) : "\u2014";
}
function setText(id, text) {
  const el = typeof id === "string" ? $(id) : id;
  if (el && el.textContent !== text) el.textContent = text;
}
function humanBytes(n) {
  if (!isNum(n)) return "\u2014";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + " " + units[i];
}
function duration(seconds) {
  if (!isNum(seconds)) return "\u2014";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + "m " + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
}
function clock(date, withSeconds) {
  const p = (n) => String(n).padStart(2, "0");
  return p(date.getHours()) + ":" + p(date.getMinutes()) + (withSeconds ? ":" + p(date.getSeconds()) : "");
}
function hueOf(name) {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
  return h % 360;
}
function randomTag(n) {
  const alphabet = "abcdefghijkmnpqrstuvwxyz23456789";
  const bytes = new Uint8Array(n);
  if (window.crypto && crypto.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < n; i++) bytes[i] = Math.floor(Math.random() * 256);
  let out = "";
  for (const b of bytes) out += alphabet[b % alphabet.length];
  return out;
}
const store = {
  get(key) { try { return window.localStorage.getItem(key); } catch (_) { return null; } },
  set(key, value) { try { window.localStorage.setItem(key, value); } catch (_) { /* private mode */ } },
};
function setPill(id, state, text) {
  const el = $(id);
  if (!el) return;
  el.dataset.state = state;
  setText(el.querySelector(".pill-state"), text);
}

// The link log in the footer: connection events worth knowing about (resets, closes, retries).
function linkLog(message) {
  const list = $("link-log");
  if (!list) return;
  const li = document.createElement("li");
  li.textContent = clock(new Date(), true) + "  " + message;
  list.prepend(li);
  while (list.children.length > 60) list.lastChild.remove();
}

// ------------------------------------------------------------------ canvas plumbing
const css = getComputedStyle(document.documentElement);
const color = (name, fallback) => (css.getPropertyValue(name) || "").trim() || fallback;
const C = {
  text: color("--text", "#e6ecf7"),
  text2: color("--text-2", "#a7b3ca"),
  muted: color("--muted", "#6f7d97"),
  grid: "rgba(148, 178, 255, 0.10)",
  grid2: "rgba(148, 178, 255, 0.20)",
  cyan: color("--cyan", "#38bdf8"),
  green: color("--green", "#34d399"),
  amber: color("--amber", "#fbbf24"),
  red: color("--red", "#f87171"),
  mars: color("--mars", "#fb923c"),
  violet: color("--violet", "#a78bfa"),
};
const MONO = (css.getPropertyValue("--mono") || "").trim() || "monospace";

const painters = new Map();  // canvas -> draw function
const dirty = new Set();
let frameRequested = false;

function registerCanvas(canvas, draw) {
  if (!canvas) return;
  painters.set(canvas, draw);
  if (resizeObserver) resizeObserver.observe(canvas);
  invalidate(canvas);
}
function invalidate(canvas) {
  if (!canvas || !painters.has(canvas)) return;
  dirty.add(canvas);
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(flushCanvases);
  }
}
function invalidateAll() {
  for (const canvas of painters.keys()) invalidate(canvas);
}
function flushCanvases() {
  frameRequested = false;
  const todo = Array.from(dirty);
  dirty.clear();
  for (const canvas of todo) {
    try { painters.get(canvas)(canvas); } catch (err) { console.warn("draw failed", canvas.id, err); }
  }
}
const resizeObserver = typeof ResizeObserver === "function"
  ? new ResizeObserver((entries) => { for (const e of entries) invalidate(e.target); })
  : null;
// Zooming changes devicePixelRatio and fires resize: redraw everything at the new density.
window.addEventListener("resize", invalidateAll);

/** Size the backing store to CSS size x devicePixelRatio; return a context in CSS pixels. */
function prepare(canvas) {
  const rect = canvas.getBoundingClientRect();
  const w = rect.width, h = rect.height;
  if (w < 2 || h < 2) return null;
  const dpr = window.devicePixelRatio || 1;
  const pw = Math.round(w * dpr), ph = Math.round(h * dpr);
  if (canvas.width !== pw || canvas.height !== ph) {
    canvas.width = pw;
    canvas.height = ph;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}
function niceStep(range, count) {
  if (!(range > 0)) return 1;
  const raw = range / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const n = raw / mag;
  return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
}
function decimalsFor(step) {
  return Math.max(0, Math.min(4, -Math.floor(Math.log10(step) + 1e-9)));
}
function placeholder(ctx, w, h, text) {
  ctx.fillStyle = C.muted;
  ctx.font = "12px " + MONO;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText(text, w / 2, h / 2);
}
function alpha(hex, a) {
  const m = /^#([0-9a-f]{6})$/i.exec(hex);
  if (!m) return hex;
  const v = parseInt(m[1], 16);
  return "rgba(" + (v >> 16) + "," + ((v >> 8) & 255) + "," + (v & 255) + "," + a + ")";
}

// Hover read-out for the line charts.
const hover = new Map();  // canvas -> x in CSS px
function trackHover(canvas) {
  canvas.addEventListener("pointermove", (e) => {
    const rect = canvas.getBoundingClientRect();
    hover.set(canvas, e.clientX - rect.left);
    invalidate(canvas);
  });
  canvas.addEventListener("pointerleave", () => { hover.delete(canvas); invalidate(canvas); });
}

/**
 * A time-series line chart. points: [{t (unix s), v, tick}], ascending. A jump of more than one tick
 * breaks the line (a gap the server could not fill).
 */
function drawLineChart(canvas, points, opt) {
  const p = prepare(canvas);
  if (!p) return;
  const { ctx, w, h } = p;
  const pts = points.filter((q) => isNum(q.v) && isNum(q.t));
  const padL = 4, padR = 46, padT = 8, padB = 16;
  const cw = w - padL - padR, ch = h - padT - padB;
  if (!pts.length) {
    placeholder(ctx, w, h, "awaiting telemetry\u2026");
    return;
  }
  let tmin = pts[0].t, tmax = pts[pts.length - 1].t;
  if (tmax - tmin < 1) tmin = tmax - 60;
  let vmin = Infinity, vmax = -Infinity;
  for (const q of pts) { if (q.v < vmin) vmin = q.v; if (q.v > vmax) vmax = q.v; }
  const minSpan = opt.minSpan || 1;
  if (vmax - vmin < minSpan) {
    const mid = (vmax + vmin) / 2;
    vmin = mid - minSpan / 2;
    vmax = mid + minSpan / 2;
  }
  const pad = (vmax - vmin) * 0.12;
  vmin -= pad; vmax += pad;
  if (isNum(opt.floor) && vmin < opt.floor && pts.every((q) => q.v >= opt.floor)) vmin = opt.floor;
  if (isNum(opt.ceil) && vmax > opt.ceil && pts.every((q) => q.v <= opt.ceil)) vmax = opt.ceil;
  const X = (t) => padL + ((t - tmin) / (tmax - tmin)) * cw;
  const Y = (v) => padT + (1 - (v - vmin) / (vmax - vmin)) * ch;

  // grid and y labels
  const step = niceStep(vmax - vmin, 3);
  const dec = decimalsFor(step);
  ctx.font = "10px " + MONO;
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  ctx.lineWidth = 1;
  for (let v = Math.ceil(vmin / step) * step; v <= vmax + 1e-9; v += step) {
    const y = Math.round(Y(v)) + 0.5;
    ctx.strokeStyle = C.grid;
    ctx.setLineDash([3, 4]);
    ctx.beginPath(); ctx.moveTo(padL, y); ctx.lineTo(padL + cw, y); ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = C.muted;
    ctx.fillText(v.toFixed(dec), padL + cw + 6, y);
  }
  // x labels: first and last time
  ctx.textBaseline = "alphabetic";
  ctx.fillStyle = C.muted;
  ctx.textAlign = "left";
  ctx.fillText(clock(new Date(tmin * 1000), false), padL, h - 3);
  ctx.textAlign = "right";
  ctx.fillText(clock(new Date(tmax * 1000), true), padL + cw, h - 3);

  // contiguous runs (a gap in ticks breaks the line)
  const runs = [];
  let run = [];
  for (let i = 0; i < pts.length; i++) {
    if (i > 0 && isNum(pts[i].tick) && isNum(pts[i - 1].tick) && pts[i].tick - pts[i - 1].tick > 1) {
      runs.push(run); run = [];
    }
    run.push(pts[i]);
  }
  runs.push(run);

  const grad = ctx.createLinearGradient(0, padT, 0, padT + ch);
  grad.addColorStop(0, alpha(opt.color, 0.28));
  grad.addColorStop(1, alpha(opt.color, 0));
  for (const r of runs) {
    if (r.length === 1) {
      ctx.fillStyle = opt.color;
      ctx.beginPath(); ctx.arc(X(r[0].t), Y(r[0].v), 1.5, 0, Math.PI * 2); ctx.fill();
      continue;
    }
    ctx.beginPath();
    ctx.moveTo(X(r[0].t), Y(r[0].v));
    for (let i = 1; i < r.length; i++) ctx.lineTo(X(r[i].t), Y(r[i].v));
    ctx.lineTo(X(r[r.length - 1].t), padT + ch);
    ctx.lineTo(X(r[0].t), padT + ch);
    ctx.closePath();
    ctx.fillStyle = grad;
    ctx.fill();
    ctx.beginPath();
    ctx.moveTo(X(r[0].t), Y(r[0].v));
    for (let i = 1; i < r.length; i++) ctx.lineTo(X(r[i].t), Y(r[i].v));
    ctx.strokeStyle = opt.color;
    ctx.lineWidth = 1.7;
    ctx.lineJoin = "round";
    ctx.stroke();
  }
  // latest point
  const last = pts[pts.length - 1];
  ctx.fillStyle = alpha(opt.color, 0.25);
  ctx.beginPath(); ctx.arc(X(last.t), Y(last.v), 5, 0, Math.PI * 2); ctx.fill();
  ctx.fillStyle = opt.color;
  ctx.beginPath(); ctx.arc(X(last.t), Y(last.v), 2.4, 0, Math.PI * 2); ctx.fill();

  // hover read-out
  const hx = hover.get(canvas);
  if (isNum(hx) && hx >= padL && hx <= padL + cw) {
    const t = tmin + ((hx - padL) / cw) * (tmax - tmin);
    let best = pts[0];
    for (const q of pts) if (Math.abs(q.t - t) < Math.abs(best.t - t)) best = q;
    const x = X(best.t), y = Y(best.v);
    ctx.strokeStyle = C.grid2;
    ctx.beginPath(); ctx.moveTo(Math.round(x) + 0.5, padT); ctx.lineTo(Math.round(x) + 0.5, padT + ch); ctx.stroke();
    ctx.fillStyle = opt.color;
    ctx.beginPath(); ctx.arc(x, y, 3.2, 0, Math.PI * 2); ctx.fill();
    const label = best.v.toFixed(opt.digits) + " " + opt.unit + "  " + clock(new Date(best.t * 1000), true);
    ctx.font = "11px " + MONO;
    const tw = ctx.measureText(label).width + 12;
    const bx = Math.min(Math.max(padL, x - tw / 2), padL + cw - tw);
    ctx.fillStyle = "rgba(6, 10, 19, 0.92)";
    ctx.strokeStyle = C.grid2;
    ctx.beginPath(); ctx.rect(bx, padT, tw, 18); ctx.fill(); ctx.stroke();
    ctx.fillStyle = C.text;
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillText(label, bx + 6, padT + 9);
  }
}

function drawSparkline(canvas, values, stroke) {
  const p = prepare(canvas);
  if (!p) return;
  const { ctx, w, h } = p;
  const vals = values.filter(isNum);
  if (vals.length < 2) {
    ctx.strokeStyle = C.grid;
    ctx.setLineDash([3, 4]);
    ctx.beginPath(); ctx.moveTo(0, h - 4.5); ctx.lineTo(w, h - 4.5); ctx.stroke();
    ctx.setLineDash([]);
    return;
  }
  let min = Math.min(...vals), max = Math.max(...vals);
  if (max - min < 1e-9) { min -= 1; max += 1; }
  const X = (i) => 1 + (i / (vals.length - 1)) * (w - 4);
  const Y = (v) => 3 + (1 - (v - min) / (max - min)) * (h - 6);
  const grad = ctx.createLinearGradient(0, 0, 0, h);
  grad.addColorStop(0, alpha(stroke, 0.3));
  grad.addColorStop(1, alpha(stroke, 0));
  ctx.beginPath();
  ctx.moveTo(X(0), Y(vals[0]));
  for (let i = 1; i < vals.length; i++) ctx.lineTo(X(i), Y(vals[i]));
  ctx.lineTo(X(vals.length - 1), h);
  ctx.lineTo(X(0), h);
  ctx.closePath();
  ctx.fillStyle = grad;
  ctx.fill();
  ctx.beginPath();
  ctx.moveTo(X(0), Y(vals[0]));
  for (let i = 1; i < vals.length; i++) ctx.lineTo(X(i), Y(vals[i]));
  ctx.strokeStyle = stroke;
  ctx.lineWidth = 1.5;
  ctx.lineJoin = "round";
  ctx.stroke();
  ctx.fillStyle = stroke;
  ctx.beginPath(); ctx.arc(X(vals.length - 1), Y(vals[vals.length - 1]), 2.2, 0, Math.PI * 2); ctx.fill();
}

// ------------------------------------------------------------------ telemetry
const records = [];          // telemetry payloads, ascending by tick (capped at TRACK_POINTS)
const tickSet = new Set();
let lastLiveAt = 0;          // performance.now() of the last live telemetry event

function lowerBound(arr, value, key) {
  let lo = 0, hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((key ? key(arr[mid]) : arr[mid]) < value) lo = mid + 1; else hi = mid;
  }
  return lo;
}

/** Record one payload: a new tick is appended; an older tick we lack fills its gap; a known tick is ignored. */
function recordTelemetry(payload) {
  if (!payload || typeof payload !== "object") return false;
  const tick = payload.tick;
  if (!isNum(tick) || tickSet.has(tick)) return false;
  tickSet.add(tick);
  const ticks = mission.ticks;
  if (!ticks.length || tick > ticks[ticks.length - 1]) {
    ticks.push(tick);
    records.push(payload);
    mission.lastTelemetry = payload;
  } else {
    ticks.splice(lowerBound(ticks, tick), 0, tick);
    if (records.length < TRACK_POINTS || tick > records[0].tick) {
      records.splice(lowerBound(records, tick, (r) => r.tick), 0, payload);
    }
  }
  if (records.length > TRACK_POINTS) records.splice(0, records.length - TRACK_POINTS);
  return true;
}

function telemetryChanged() {
  renderTelemetry();
  invalidate($("chart-battery"));
  invalidate($("chart-temperature"));
  invalidate($("chart-speed"));
  invalidate($("track-map"));
}

function renderTelemetry() {
  const t = mission.lastTelemetry;
  if (!t) return;
  setText("telemetry-battery", fixed(t.battery_level, 1));
  const gauge = $("battery-gauge");
  if (gauge && isNum(t.battery_level)) {
    const b = Math.max(0, Math.min(100, t.battery_level));
    gauge.style.width = b + "%";
    gauge.style.background = b < 20 ? C.red : b < 45 ? C.amber : C.green;
  }
  setText("telemetry-temperature", fixed(t.temperature_c, 1));
  setText("telemetry-speed", fixed(t.speed_mps, 2));
  const status = $("telemetry-status");
  if (status) {
    const s = typeof t.status === "string" ? t.status : "\u2014";
    setText(status, s);
    status.dataset.status = STATUSES.includes(s) ? s : "";
  }
  setText("telemetry-heading", "heading " + fixed(t.heading_deg, 0) + "\u00b0 " + compass(t.heading_deg));
  setText("telemetry-waypoint", "waypoint " + (isNum(t.waypoint) ? t.waypoint : "\u2014"));
  setText("telemetry-sun", "sun " + fixed(t.sun_elevation_deg, 1) + "\u00b0 elev.");
  setText("telemetry-lst", typeof t.local_solar_time === "string" ? t.local_solar_time : "\u2014");
  setText("telemetry-solnum", "sol " + (isNum(t.sol) ? t.sol : "\u2014") + " \u00b7 LMST");
  setText("telemetry-sol", "Sol " + (isNum(t.sol) ? t.sol : "\u2014") + " \u00b7 " +
    (typeof t.local_solar_time === "string" ? t.local_solar_time : "--:--") + " LMST");
  if (isNum(t.odometer_m) && t.odometer_m >= 10000) {
    setText("telemetry-odometer", (t.odometer_m / 1000).toFixed(2));
    setText("telemetry-odometer-unit", "km");
  } else {
    setText("telemetry-odometer", fixed(t.odometer_m, 1));
    setText("telemetry-odometer-unit", "m");
  }
  const loc = t.location || {};
  setText("telemetry-position", "x " + fixed(loc.x_m, 1) + " / y " + fixed(loc.y_m, 1) + " m");
  setText("telemetry-solar", fixed(t.solar_power_w, 1));
  setText("telemetry-draw", "draw " + fixed(t.power_draw_w, 1) + " W");
  setText("telemetry-delay", duration(t.signal_delay_s));
  setText("telemetry-latlon", isNum(loc.lat) && isNum(loc.lon)
    ? fixed(loc.lat, 3) + "\u00b0, " + fixed(loc.lon, 3) + "\u00b0"
    : "one-way light time");
}
function compass(deg) {
  if (!isNum(deg)) return "";
  const names = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"];
  return names[Math.round((((deg % 360) + 360) % 360) / 45) % 8];
}

function chartSeries(field) {
  const from = Math.max(0, records.length - CHART_POINTS);
  const out = [];
  for (let i = from; i < records.length; i++) {
    const r = records[i];
    out.push({ t: r.time, v: r[field], tick: r.tick });
  }
  return out;
}

function drawTrack(canvas) {
  const p = prepare(canvas);
  if (!p) return;
  const { ctx, w, h } = p;
  const pts = [];
  for (const r of records) {
    const loc = r.location;
    if (loc && isNum(loc.x_m) && isNum(loc.y_m)) pts.push(r);
  }
  // backdrop
  const bg = ctx.createRadialGradient(w / 2, h / 2, 0, w / 2, h / 2, Math.max(w, h) * 0.7);
  bg.addColorStop(0, "rgba(251, 146, 60, 0.06)");
  bg.addColorStop(1, "rgba(251, 146, 60, 0)");
  ctx.fillStyle = bg;
  ctx.fillRect(0, 0, w, h);
  if (!pts.length) {
    placeholder(ctx, w, h, "awaiting position fix\u2026");
    return;
  }
  let minx = Infinity, maxx = -Infinity, miny = Infinity, maxy = -Infinity;
  for (const r of pts) {
    const { x_m: x, y_m: y } = r.location;
    if (x < minx) minx = x; if (x > maxx) maxx = x;
    if (y < miny) miny = y; if (y > maxy) maxy = y;
  }
  const margin = 28;
  const minSpan = 20;
  const spanX = Math.max(maxx - minx, minSpan), spanY = Math.max(maxy - miny, minSpan);
  const scale = Math.min((w - 2 * margin) / spanX, (h - 2 * margin) / spanY);
  const cx = (minx + maxx) / 2, cy = (miny + maxy) / 2;
  const SX = (x) => w / 2 + (x - cx) * scale;
  const SY = (y) => h / 2 - (y - cy) * scale;

  // metric grid
  const step = niceStep(Math.max(w, h) / scale, 7);
  const x0 = cx - w / 2 / scale, x1 = cx + w / 2 / scale;
  const y0 = cy - h / 2 / scale, y1 = cy + h / 2 / scale;
  ctx.lineWidth = 1;
  ctx.font = "10px " + MONO;
  ctx.fillStyle = C.muted;
  ctx.strokeStyle = C.grid;
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  const dec = decimalsFor(step);
  for (let x = Math.ceil(x0 / step) * step; x <= x1; x += step) {
    const sx = Math.round(SX(x)) + 0.5;
    ctx.beginPath(); ctx.moveTo(sx, 0); ctx.lineTo(sx, h); ctx.stroke();
    if (sx > 30 && sx < w - 40) ctx.fillText(x.toFixed(dec), sx + 3, 4);
  }
  ctx.textBaseline = "bottom";
  for (let y = Math.ceil(y0 / step) * step; y <= y1; y += step) {
    const sy = Math.round(SY(y)) + 0.5;
    ctx.beginPath(); ctx.moveTo(0, sy); ctx.lineTo(w, sy); ctx.stroke();
    if (sy > 20 && sy < h - 28) ctx.fillText(y.toFixed(dec), 4, sy - 2);
  }
  // landing site, when in view
  if (SX(0) > 0 && SX(0) < w && SY(0) > 0 && SY(0) < h) {
    ctx.strokeStyle = C.cyan;
    ctx.lineWidth = 1.2;
    const lx = SX(0), ly = SY(0);
    ctx.beginPath(); ctx.moveTo(lx - 5, ly); ctx.lineTo(lx + 5, ly); ctx.moveTo(lx, ly - 5); ctx.lineTo(lx, ly + 5); ctx.stroke();
    ctx.fillStyle = C.cyan;
    ctx.textBaseline = "top";
    ctx.fillText("landing", lx + 6, ly + 3);
  }

  // the path: older segments fade out
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  const n = pts.length;
  const chunk = Math.max(1, Math.ceil(n / 24));
  for (let start = 0; start < n - 1; start += chunk) {
    const end = Math.min(n - 1, start + chunk);
    ctx.beginPath();
    ctx.moveTo(SX(pts[start].location.x_m), SY(pts[start].location.y_m));
    for (let i = start + 1; i <= end; i++) ctx.lineTo(SX(pts[i].location.x_m), SY(pts[i].location.y_m));
    ctx.strokeStyle = alpha(C.mars, (0.18 + 0.82 * (end / (n - 1))).toFixed(3));
    ctx.lineWidth = 2.2;
    ctx.stroke();
  }
  // start of the recorded track
  const first = pts[0].location;
  ctx.strokeStyle = C.text2;
  ctx.lineWidth = 1.3;
  ctx.beginPath(); ctx.arc(SX(first.x_m), SY(first.y_m), 4, 0, Math.PI * 2); ctx.stroke();

  // current position and heading
  const last = pts[n - 1];
  const px = SX(last.location.x_m), py = SY(last.location.y_m);
  const glow = ctx.createRadialGradient(px, py, 0, px, py, 22);
  glow.addColorStop(0, "rgba(251, 146, 60, 0.45)");
  glow.addColorStop(1, "rgba(251, 146, 60, 0)");
  ctx.fillStyle = glow;
  ctx.beginPath(); ctx.arc(px, py, 22, 0, Math.PI * 2); ctx.fill();
  ctx.save();
  ctx.translate(px, py);
  ctx.rotate(((isNum(last.heading_deg) ? last.heading_deg : 0) * Math.PI) / 180);  // compass: 0 = north (up), clockwise
  ctx.beginPath();
  ctx.moveTo(0, -11); ctx.lineTo(7, 8); ctx.lineTo(0, 4); ctx.lineTo(-7, 8); ctx.closePath();
  ctx.fillStyle = "#fff7ed";
  ctx.strokeStyle = C.mars;
  ctx.lineWidth = 1.6;
  ctx.fill();
  ctx.stroke();
  ctx.restore();

  // north arrow
  ctx.save();
  ctx.translate(w - 20, 24);
  ctx.fillStyle = C.text2;
  ctx.beginPath(); ctx.moveTo(0, -10); ctx.lineTo(5, 4); ctx.lineTo(0, 1); ctx.lineTo(-5, 4); ctx.closePath(); ctx.fill();
  ctx.font = "bold 10px " + MONO;
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  ctx.fillText("N", 0, 6);
  ctx.restore();

  // scale bar
  const barPx = step * scale;
  ctx.strokeStyle = C.text2;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  ctx.moveTo(12, h - 12); ctx.lineTo(12, h - 16); ctx.moveTo(12, h - 14); ctx.lineTo(12 + barPx, h - 14);
  ctx.moveTo(12 + barPx, h - 12); ctx.lineTo(12 + barPx, h - 16);
  ctx.stroke();
  ctx.fillStyle = C.text2;
  ctx.font = "10px " + MONO;
  ctx.textAlign = "left";
  ctx.textBaseline = "bottom";
  ctx.fillText(step.toFixed(dec) + " m", 16 + barPx, h - 8);
  // position read-out
  ctx.textAlign = "right";
  ctx.fillStyle = C.text;
  ctx.fillText("x " + last.location.x_m.toFixed(1) + "  y " + last.location.y_m.toFixed(1) + " m  \u2022  " +
    fixed(last.heading_deg, 0) + "\u00b0", w - 10, h - 8);
}

registerCanvas($("chart-battery"), (c) => drawLineChart(c, chartSeries("battery_level"),
  { color: C.green, minSpan: 2, floor: 0, ceil: 100, unit: "%", digits: 1 }));
registerCanvas($("chart-temperature"), (c) => drawLineChart(c, chartSeries("temperature_c"),
  { color: C.cyan, minSpan: 2, unit: "\u00b0C", digits: 1 }));
registerCanvas($("chart-speed"), (c) => drawLineChart(c, chartSeries("speed_mps"),
  { color: C.mars, minSpan: 0.05, floor: 0, unit: "m/s", digits: 3 }));
registerCanvas($("track-map"), drawTrack);
["chart-battery", "chart-temperature", "chart-speed"].forEach((id) => { if ($(id)) trackHover($(id)); });

function onTelemetry(payload) {
  mission.telemetryEvents++;
  lastLiveAt = performance.now();
  const ticks = mission.ticks;
  const last = ticks.length ? ticks[ticks.length - 1] : null;
  if (recordTelemetry(payload)) telemetryChanged();
  else refreshFreshness();
  // A tick that fell between the backfill and the live stream (or a gap the history could not replay):
  // readings are a function of the tick, so ask the server for the ones we lack.
  if (last !== null && payload && isNum(payload.tick) && payload.tick - last > 1 && payload.tick - last <= 1000) {
    fillTelemetryGap(payload.tick - last + 2);
  }
}

async function fillTelemetryGap(count) {
  try {
    const res = await fetch(ROOT + "/api/rover/telemetry?last=" + Math.min(1000, count), { cache: "no-store" });
    if (!res.ok) return;
    const body = await res.json();
    let added = 0;
    for (const item of (body && Array.isArray(body.telemetry) ? body.telemetry : [])) {
      if (recordTelemetry(item)) added++;
    }
    if (added) {
      telemetryChanged();
      linkLog("telemetry gap filled: " + added + " points");
    }
  } catch (err) {
    linkLog("telemetry gap fill failed: " + (err && err.message ? err.message : err));
  }
}

async function backfillTelemetry() {
  try {
    const res = await fetch(ROOT + "/api/rover/telemetry?last=150", { cache: "no-store" });
    if (!res.ok) {
      linkLog("telemetry backfill unavailable (HTTP " + res.status + ")");
      return;
    }
    const body = await res.json();
    const list = body && Array.isArray(body.telemetry) ? body.telemetry : [];
    let added = 0;
    for (const item of list) if (recordTelemetry(item)) added++;
    if (added) telemetryChanged();
    linkLog("telemetry backfill: " + added + " of " + list.length + " points");
  } catch (err) {
    linkLog("telemetry backfill failed: " + (err && err.message ? err.message : err));
  }
}

function refreshFreshness() {
  const chip = $("telemetry-fresh");
  if (!chip) return;
  if (!lastLiveAt) {
    setText(chip, mission.lastTelemetry ? "backfilled \u00b7 awaiting live data" : "waiting for data");
    chip.className = "chip muted";
    return;
  }
  const age = (performance.now() - lastLiveAt) / 1000;
  if (age > 10) {
    setText(chip, "stale \u00b7 " + duration(age) + " ago");
    chip.className = "chip warn";
  } else {
    setText(chip, "live \u00b7 updated " + Math.floor(age) + " s ago");
    chip.className = "chip";
  }
}

// ------------------------------------------------------------------ server metrics
const workers = new Map();   // "host/pid" -> latest payload
const spark = { cpu: [], memory: [], connections: [], rps: [] };
let lastSampleTs = -Infinity;

function sumOf(list, field) {
  let total = 0, any = false;
  for (const m of list) if (isNum(m[field])) { total += m[field]; any = true; }
  return any ? total : NaN;
}

function onMetrics(payload) {
  if (!payload || typeof payload !== "object") return;
  mission.metricsEvents++;
  mission.lastMetrics = payload;
  const key = String(payload.host || "") + "/" + String(payload.pid ?? "?");
  workers.set(key, payload);
  // Forget workers that stopped reporting (10 s behind the newest report).
  let newest = -Infinity;
  for (const m of workers.values()) if (isNum(m.timestamp) && m.timestamp > newest) newest = m.timestamp;
  for (const [k, m] of workers) if (isNum(m.timestamp) && m.timestamp < newest - 10) workers.delete(k);

  const list = Array.from(workers.values());
  const agg = {
    cpu: sumOf(list, "cpu_percent"),
    memory: sumOf(list, "memory_mb"),
    connections: sumOf(list, "open_connections"),
    rps: sumOf(list, "requests_per_second"),
    streams: sumOf(list, "active_streams"),
    bytes: sumOf(list, "total_bytes_streamed"),
    mbps: sumOf(list, "avg_throughput_mbps"),
    errors: sumOf(list, "connection_errors"),
  };
  setText("metrics-cpu", fixed(agg.cpu, 1));
  setText("metrics-memory", fixed(agg.memory, 1));
  setText("metrics-connections", isNum(agg.connections) ? String(Math.round(agg.connections)) : "\u2014");
  setText("metrics-rps", fixed(agg.rps, 1));
  setText("metrics-streams", isNum(agg.streams) ? String(Math.round(agg.streams)) : "\u2014");
  setText("metrics-bytes", humanBytes(agg.bytes));
  setText("metrics-throughput", isNum(agg.mbps) ? agg.mbps.toFixed(2) + " Mbps" : "\u2014");
  setText("metrics-errors", isNum(agg.errors) ? String(Math.round(agg.errors)) : "\u2014");
  setText("metrics-workers", list.length === 1
    ? "1 worker \u00b7 pid " + String(list[0].pid ?? "?")
    : list.length + " workers (summed)");
  renderWorkerTable(list);

  // One sparkline sample per reporting round: reports less than a second apart are merged.
  const ts = isNum(payload.timestamp) ? payload.timestamp : Date.now() / 1000;
  if (ts >= lastSampleTs - 0.5) {
    const merge = ts - lastSampleTs < 1 && spark.cpu.length > 0;
    for (const name of Object.keys(spark)) {
      const series = spark[name];
      if (merge) series[series.length - 1] = agg[name];
      else series.push(agg[name]);
      if (series.length > SPARK_POINTS) series.splice(0, series.length - SPARK_POINTS);
    }
    if (!merge) lastSampleTs = ts;
    for (const name of Object.keys(spark)) invalidate($("spark-" + name));
  }
}

function renderWorkerTable(list) {
  const table = $("metrics-table");
  const body = $("metrics-rows");
  if (!table || !body) return;
  table.hidden = list.length < 2;
  if (table.hidden) return;
  const rows = list.slice().sort((a, b) => String(a.host).localeCompare(String(b.host)) || (a.pid - b.pid));
  const frag = document.createDocumentFragment();
  for (const m of rows) {
    const tr = document.createElement("tr");
    const cells = [
      (m.host ? m.host + " \u00b7 " : "") + "pid " + String(m.pid ?? "?"),
      fixed(m.cpu_percent, 1), fixed(m.memory_mb, 1),
      isNum(m.open_connections) ? String(m.open_connections) : "\u2014",
      isNum(m.active_streams) ? String(m.active_streams) : "\u2014",
      isNum(m.websocket_members) ? String(m.websocket_members) : "\u2014",
      fixed(m.requests_per_second, 1),
    ];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    frag.appendChild(tr);
  }
  body.replaceChildren(frag);
}

registerCanvas($("spark-cpu"), (c) => drawSparkline(c, spark.cpu, C.cyan));
registerCanvas($("spark-memory"), (c) => drawSparkline(c, spark.memory, C.violet));
registerCanvas($("spark-connections"), (c) => drawSparkline(c, spark.connections, C.green));
registerCanvas($("spark-rps"), (c) => drawSparkline(c, spark.rps, C.mars));

// ------------------------------------------------------------------ broadcasts
const seenBroadcasts = new Set();
let replayUntil = 0;   // after a reset the server replays history: skip broadcasts we already have

function onBroadcastChannel(eventName, payload) {
  const key = eventName + "|" + JSON.stringify(payload);
  if (performance.now() < replayUntil && seenBroadcasts.has(key)) return;
  seenBroadcasts.add(key);
  if (seenBroadcasts.size > 500) seenBroadcasts.delete(seenBroadcasts.values().next().value);

  mission.broadcasts.push(payload);
  if (mission.broadcasts.length > BROADCAST_KEEP) mission.broadcasts.splice(0, mission.broadcasts.length - BROADCAST_KEEP);

  const list = $("broadcast-log");
  if (!list) return;
  const empty = list.querySelector(".broadcast-empty");
  if (empty) empty.remove();
  const li = document.createElement("li");
  const head = document.createElement("div");
  head.className = "b-head";
  const who = document.createElement("span");
  who.className = "b-sender";
  const when = document.createElement("span");
  when.className = "mono";
  const body = document.createElement("div");
  body.className = "b-text";
  const isBroadcast = payload && typeof payload === "object" && !Array.isArray(payload) &&
    (payload.type === "broadcast" || (eventName === "broadcast" && typeof payload.message === "string") ||
     (eventName === "message" && typeof payload.message === "string" && Object.keys(payload).every((k) => k === "message" || k === "timestamp")));
  if (isBroadcast) {
    who.textContent = typeof payload.sender === "string" && payload.sender ? payload.sender : "anonymous";
    when.textContent = broadcastTime(payload.timestamp);
    body.textContent = typeof payload.message === "string" ? payload.message : JSON.stringify(payload.message);
  } else {
    li.className = "other";
    who.textContent = "event: " + eventName;
    when.textContent = clock(new Date(), true);
    body.classList.add("b-json");
    body.textContent = JSON.stringify(payload);
  }
  head.append(who, when);
  li.append(head, body);
  list.prepend(li);
  while (list.children.length > BROADCAST_KEEP) list.lastChild.remove();
  setText("broadcast-count", mission.broadcasts.length + " received");
}
function broadcastTime(ts) {
  if (typeof ts === "string") {
    const d = new Date(ts);
    if (!Number.isNaN(d.getTime())) return clock(d, true);
    return ts.slice(0, 32);
  }
  if (isNum(ts)) return clock(new Date(ts * 1000), true);
  return clock(new Date(), true);
}

async function sendBroadcast(message, sender) {
  const note = $("broadcast-note");
  const button = $("broadcast-send");
  const showNote = (text, cls) => { if (note) { note.textContent = text; note.className = "form-note " + (cls || ""); } };
  if (!message.trim()) {
    showNote("Type a message first.", "error");
    return false;
  }
  if (button) button.disabled = true;
  showNote("Sending\u2026");
  try {
    const res = await fetch(ROOT + "/broadcast", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify({ message, sender }),
    });
    const body = await res.json().catch(() => null);
    if (!res.ok) {
      const reason = body && typeof body.message === "string" ? body.message : "HTTP " + res.status + " " + res.statusText;
      showNote(reason, "error");
      return false;
    }
    const n = body && isNum(body.recipients) ? body.recipients : null;
    showNote(n === null ? "Broadcast sent." : "Broadcast sent to " + n + " recipient" + (n === 1 ? "" : "s") + ".", "ok");
    return true;
  } catch (err) {
    showNote("Could not reach the server: " + (err && err.message ? err.message : err), "error");
    return false;
  } finally {
    if (button) button.disabled = false;
  }
}

// ------------------------------------------------------------------ multiplexed SSE
let feed = null;

function setSseState(state, label) {
  mission.sse = state;
  const pill = state === "open" ? "live" : state === "closed" ? "offline" : "connecting";
  setPill("state-sse", pill, label || (state === "open" ? "live" : state));
}

/** One subscription for every live panel; `lastEventId` resumes it (back from the back/forward cache). */
function openFeed(lastEventId) {
  let opened = false;
  const handlers = Object.fromEntries(SSE_EVENTS.map((name) => [name, onFeedEvent]));
  feed = subscribe(SSE_CHANNELS, handlers, {
    lastEventId,
    onStateChange(state, detail) {
      if (state === "open") {
        linkLog("SSE " + (opened ? "reconnected" : "connected") + (feed && feed.lastEventId ? " (resuming)" : ""));
        opened = true;
      } else if (detail.delay) {
        linkLog("SSE closed; new connection in " + (detail.delay / 1000).toFixed(1) + " s");
      }
      setSseState(state, detail.delay ? "retry in " + Math.round(detail.delay / 1000) + " s" : undefined);
    },
    onReset(reset) {
      replayUntil = performance.now() + 5000;
      linkLog("SSE reset on " + reset.channel + " (" + reset.reason + "): history replayed");
      console.info("[mission] SSE reset", reset);
    },
    onShutdown() {
      linkLog("server is restarting; SSE will reconnect");
    },
  });
}

function onFeedEvent(data, event) {
  if (event.channel === "rover.telemetry") {
    if (event.type === "telemetry" || event.type === "message") onTelemetry(data);
  } else if (event.channel === "server.metrics") {
    if (event.type === "metrics" || event.type === "message") onMetrics(data);
  } else if (event.channel === "broadcast") {
    onBroadcastChannel(event.type, data);
  }
}

// ------------------------------------------------------------------ comms (WebSocket rooms)
const comms = {
  client: null,       // the RoomClient of the room shown, or null
  room: null,
  user: null,
};

function setWsState(state, label) {
  mission.ws = state;
  const pill = state === "open" ? "live" : state === "closed" ? "offline" : "connecting";
  setPill("state-ws", pill, label || (state === "open" ? "live" : state));
  const send = $("chat-send");
  if (send) send.disabled = state !== "open";
}

function validUser(name) {
  return typeof name === "string" && name.length >= 1 && name.length <= MAX_USER && !/[\x00-\x1f\x7f]/.test(name);
}
function roomProblem(room) {
  if (!ROOM_RE.test(room)) return "Room names are 1\u2013100 characters from A\u2013Z a\u2013z 0\u20139 _ . - and start with a letter or digit.";
  if (room.startsWith("private-")) return "Private rooms need an access token; this console cannot join them.";
  return null;
}
function roomNote(text, cls) {
  const note = $("room-note");
  if (!note) return;
  note.textContent = text || "";
  note.className = "form-note " + (cls || "");
}

function currentUserField() {
  const field = $("user-name");
  return field ? field.value.trim() : "";
}

function chatLine(kind, parts) {
  const log = $("chat-log");
  if (!log) return;
  const nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  const empty = log.querySelector(".chat-empty");
  if (empty) empty.remove();
  const line = document.createElement("div");
  line.className = "chat-line " + kind;
  const time = document.createElement("span");
  time.className = "chat-time";
  time.textContent = clock(parts.date || new Date(), false);
  line.appendChild(time);
  if (kind === "msg" || kind === "msg mine") {
    const user = document.createElement("span");
    user.className = "chat-user";
    user.style.setProperty("--hue", String(hueOf(parts.user)));
    user.textContent = parts.user;
    user.title = parts.user;
    line.appendChild(user);
  }
  const text = document.createElement("span");
  text.className = "chat-text";
  text.textContent = parts.text;
  line.appendChild(text);
  log.appendChild(line);
  while (log.children.length > CHAT_DOM_KEEP) log.firstChild.remove();
  if (nearBottom) log.scrollTop = log.scrollHeight;
}
function chatDivider(text) {
  const log = $("chat-log");
  if (!log) return;
  const div = document.createElement("div");
  div.className = "chat-divider";
  div.textContent = text;
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
}

function showMessage(frame) {
  const user = typeof frame.user === "string" ? frame.user : "anonymous";
  const text = typeof frame.text === "string" ? frame.text : String(frame.text ?? "");
  const room = typeof frame.room === "string" ? frame.room : comms.room;
  mission.chat.push({ user, text, room });
  const date = isNum(frame.timestamp) ? new Date(frame.timestamp * 1000) : new Date();
  chatLine(user === comms.user ? "msg mine" : "msg", { user, text, date });
}

function renderMembers() {
  const counts = comms.client ? comms.client.presence : new Map();
  const names = comms.client ? comms.client.members : [];
  mission.members = names;
  const list = $("chat-members");
  if (!list) return;
  const frag = document.createDocumentFragment();
  for (const name of names) {
    const li = document.createElement("li");
    const me = name === comms.user;
    if (me) li.className = "me";
    const dot = document.createElement("span");
    dot.className = "dot";
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    label.title = name;
    li.append(dot, label);
    const n = counts.get(name);
    if (me || n > 1) {
      const extra = document.createElement("span");
      extra.className = "you";
      extra.textContent = (me ? "you" : "") + (n > 1 ? (me ? " \u00b7 " : "") + "\u00d7" + n : "");
      li.appendChild(extra);
    }
    frag.appendChild(li);
  }
  list.replaceChildren(frag);
  setText("members-count", String(names.length));
}

function frameTime(frame) {
  return isNum(frame.timestamp) ? new Date(frame.timestamp * 1000) : undefined;
}

/** The comms panel's RoomClient options; `mine` drops the calls of a client the panel has replaced since. */
function roomOptions(room, user, mine) {
  return {
    user,
    onHistory: mine((messages) => { for (const m of messages) showMessage(m); }),
    onMessage: mine(showMessage),
    onPresence: mine(renderMembers),
    onJoin: mine((frame) => chatLine("system", { text: frame.user + " joined #" + room, date: frameTime(frame) })),
    onLeave: mine((frame) => chatLine("system", { text: frame.user + " left #" + room, date: frameTime(frame) })),
    onError: mine((error) => chatLine("error", { text: error.message + (error.code ? " (" + error.code + ")" : "") })),
    onStateChange: mine((state, detail) => {
      setWsState(state, detail.delay ? "retry in " + Math.round(detail.delay / 1000) + " s" : undefined);
      if (detail.code) {
        const reason = detail.reason ? ": " + detail.reason : "";
        linkLog("WebSocket #" + room + " closed " + detail.code + reason);
        if (detail.code === 1001) chatLine("system", { text: "Server restarting" + reason });
        else if (state !== "closed") chatLine("system", { text: "Link lost (" + detail.code + reason + ")" });
        if (detail.delay) chatLine("system", { text: "Reconnecting in " + Math.round(detail.delay / 1000) + " s\u2026" });
      }
      if (state === "open" && !detail.rejoin) {
        chatLine("system", { text: "you joined #" + room + " as " + user + " \u00b7 " + mission.members.length + " online" });
        const log = $("chat-log");
        if (log && !log.querySelector(".chat-line.msg")) {
          const hint = document.createElement("div");
          hint.className = "chat-empty";
          hint.textContent = "No messages yet. Say hello to the team.";
          log.appendChild(hint);
        }
      }
    }),
  };
}

function switchRoom(room, user) {
  const previous = comms.client;
  comms.client = null;  // what it reports while closing is no longer this panel's business
  if (previous) previous.close(1000, "switching room");
  comms.room = room;
  comms.user = user;
  mission.room = room;
  store.set("mission.room", room);
  renderMembers();
  const log = $("chat-log");
  if (log) log.replaceChildren();
  chatDivider("#" + room + " \u00b7 " + user);
  setText("comms-room-chip", "#" + room);
  for (const b of document.querySelectorAll(".btn-room")) {
    b.setAttribute("aria-pressed", String(b.dataset.room === room));
  }
  const field = $("room-name");
  if (field && document.activeElement !== field) field.value = room;
  let client = null;
  const mine = (fn) => (...args) => { if (comms.client === client) fn(...args); };
  client = comms.client = new RoomClient(room, roomOptions(room, user, mine));
  setWsState("connecting");
  return client;
}

/** Switch the comms panel to `room` as `user`; resolves when the room is joined (history and presence in). */
function joinRoom(room, user) {
  room = String(room ?? "").trim();
  user = user == null ? currentUserField() : String(user).trim();
  const problem = roomProblem(room) || (validUser(user) ? null
    : "Call signs are 1\u2013" + MAX_USER + " printable characters.");
  if (problem) {
    roomNote(problem, "error");
    return Promise.reject(new Error(problem));
  }
  roomNote("");
  const userField = $("user-name");
  if (userField && userField.value !== user) userField.value = user;
  store.set("mission.user", user);
  let client = comms.client;
  if (!client || client.closed || comms.room !== room || comms.user !== user) client = switchRoom(room, user);
  return client.ready;  // {room, user, members}
}

function submitChat(raw) {
  const text = String(raw ?? "").trim();
  if (!text) return false;
  if (text.length > MAX_TEXT) {
    chatLine("error", { text: "Messages are at most " + MAX_TEXT + " characters (this one has " + text.length + ")." });
    return false;
  }
  if (!comms.client || !comms.client.send(text)) {
    chatLine("error", { text: "Not connected to a channel; the message was not sent." });
    return false;
  }
  return true;
}

mission.joinRoom = joinRoom;
mission.sendChat = (text) => submitChat(text);

// ------------------------------------------------------------------ rover image
const image = { run: 0, controller: null, url: null, showing: false, queued: null };

function displayImage(blob, final) {
  const img = $("rover-image");
  if (!img) return;
  if (image.showing) {          // the previous partial is still decoding: keep only the newest
    if (final || !image.queued || !image.queued.final) image.queued = { blob, final };
    return;
  }
  const url = URL.createObjectURL(blob);
  const previous = image.url;
  image.url = url;
  image.showing = true;
  const settle = () => {
    img.onload = img.onerror = null;
    image.showing = false;
    if (previous && previous !== image.url) URL.revokeObjectURL(previous);
    img.classList.remove("refreshing");
    const empty = $("camera-empty");
    if (empty) empty.hidden = true;
    const next = image.queued;
    image.queued = null;
    if (next) displayImage(next.blob, next.final);
  };
  img.onload = settle;
  img.onerror = settle;
  img.src = url;
}

function imageProgress(received, total) {
  const bar = $("image-progress");
  const pct = total ? Math.min(100, (received / total) * 100) : null;
  if (bar) {
    if (pct === null) bar.removeAttribute("value");
    else bar.value = pct;
  }
  setText("image-percent", pct === null ? humanBytes(received) : pct.toFixed(0) + "%");
  setText("image-status", humanBytes(received) + (total ? " / " + humanBytes(total) : "") + " received");
  if (!mission.imageDone) setPill("state-image", "connecting", pct === null ? "loading" : "loading " + pct.toFixed(0) + "%");
}

async function digestHex(buffer) {
  if (window.crypto && crypto.subtle && typeof crypto.subtle.digest === "function") {
    const hash = await crypto.subtle.digest("SHA-256", buffer);
    return Array.from(new Uint8Array(hash), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  return sha256Hex(new Uint8Array(buffer));  // insecure origins have no crypto.subtle
}

async function loadImage() {
  const run = ++image.run;
  if (image.controller) image.controller.abort();
  const controller = typeof AbortController === "function" ? new AbortController() : null;
  image.controller = controller;
  image.queued = null;
  mission.imageBytes = 0;
  mission.imageTotal = null;
  mission.imageDone = false;
  mission.imageSha256 = null;
  const bar = $("image-progress");
  if (bar) { bar.classList.remove("done", "failed"); bar.value = 0; }
  const img = $("rover-image");
  if (img && img.getAttribute("src")) img.classList.add("refreshing");
  setText("image-hash", "sha-256 \u2014");
  setText("image-status", "Requesting downlink\u2026");
  setText("image-percent", "0%");
  setPill("state-image", "connecting", "connecting");
  const started = performance.now();
  try {
    const res = await fetch(ROOT + "/stream/rover-image", { cache: "no-store", signal: controller ? controller.signal : undefined });
    if (run !== image.run) return;
    if (!res.ok) throw new Error("HTTP " + res.status);
    const length = parseInt(res.headers.get("Content-Length") || "", 10);
    const total = Number.isFinite(length) && length > 0 ? length : null;
    mission.imageTotal = total;
    const chunks = [];
    let received = 0;
    if (res.body && typeof res.body.getReader === "function") {
      const reader = res.body.getReader();
      let nextShow = IMAGE_STEP;
      let lastPaint = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (run !== image.run) { reader.cancel().catch(noop); return; }
        if (done) break;
        chunks.push(value);
        received += value.byteLength;
        mission.imageBytes = received;
        const now = performance.now();
        if (now - lastPaint > 50 || received === total) { imageProgress(received, total); lastPaint = now; }
        if (received >= nextShow) {
          nextShow = (Math.floor(received / IMAGE_STEP) + 1) * IMAGE_STEP;
          displayImage(new Blob(chunks, { type: "image/jpeg" }), false);
        }
      }
    } else {
      const buf = new Uint8Array(await res.arrayBuffer());
      if (run !== image.run) return;
      chunks.push(buf);
      received = buf.byteLength;
      mission.imageBytes = received;
    }
    imageProgress(received, total);
    if (total !== null && received !== total) throw new Error("got " + received + " of " + total + " bytes");
    const blob = new Blob(chunks, { type: "image/jpeg" });
    displayImage(blob, true);
    const hex = await digestHex(await blob.arrayBuffer());
    if (run !== image.run) return;
    mission.imageSha256 = hex;
    mission.imageDone = true;
    if (bar) { bar.classList.add("done"); bar.value = 100; }
    const secs = (performance.now() - started) / 1000;
    setText("image-status", humanBytes(received) + " in " + secs.toFixed(1) + " s \u00b7 " +
      ((received * 8) / 1e6 / Math.max(secs, 0.001)).toFixed(1) + " Mbps");
    setText("image-percent", "100%");
    setText("image-hash", "sha-256 " + hex);
    setPill("state-image", "live", "loaded");
  } catch (err) {
    if (run !== image.run || (err && err.name === "AbortError")) return;
    if (bar) bar.classList.add("failed");
    setText("image-status", "Download failed: " + (err && err.message ? err.message : err));
    setPill("state-image", "offline", "failed");
    linkLog("image download failed: " + (err && err.message ? err.message : err));
  }
}

// SHA-256 for origins without crypto.subtle (plain http on a non-loopback host).
function sha256Hex(bytes) {
  const ror = (x, n) => (x >>> n) | (x << (32 - n));
  const primes = [];
  for (let n = 2; primes.length < 64; n++) if (primes.every((p) => n % p)) primes.push(n);
  const frac = (x) => ((x - Math.floor(x)) * 4294967296) >>> 0;
  const K = primes.map((p) => frac(Math.pow(p, 1 / 3)));
  const H = primes.slice(0, 8).map((p) => frac(Math.sqrt(p)));
  const len = bytes.length;
  const padded = new Uint8Array(((len + 9 + 63) >> 6) << 6);
  padded.set(bytes);
  padded[len] = 0x80;
  const dv = new DataView(padded.buffer);
  dv.setUint32(padded.length - 8, Math.floor(len / 0x20000000));
  dv.setUint32(padded.length - 4, (len << 3) >>> 0);
  const W = new Uint32Array(64);
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) W[i] = dv.getUint32(off + i * 4);
    for (let i = 16; i < 64; i++) {
      const a = W[i - 15], b = W[i - 2];
      W[i] = (W[i - 16] + (ror(a, 7) ^ ror(a, 18) ^ (a >>> 3)) + W[i - 7] + (ror(b, 17) ^ ror(b, 19) ^ (b >>> 10))) | 0;
    }
    let [a, b, c, d, e, f, g, h] = H;
    for (let i = 0; i < 64; i++) {
      const t1 = (h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + W[i]) | 0;
      const t2 = ((ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    H[0] = (H[0] + a) | 0; H[1] = (H[1] + b) | 0; H[2] = (H[2] + c) | 0; H[3] = (H[3] + d) | 0;
    H[4] = (H[4] + e) | 0; H[5] = (H[5] + f) | 0; H[6] = (H[6] + g) | 0; H[7] = (H[7] + h) | 0;
  }
  return H.map((x) => (x >>> 0).toString(16).padStart(8, "0")).join("");
}
mission._sha256 = sha256Hex;  // exposed for checking the fallback against crypto.subtle

// ------------------------------------------------------------------ health footer & clock
async function checkHealth() {
  const box = $("health");
  try {
    const res = await fetch(ROOT + "/health", { cache: "no-store" });
    const body = await res.json().catch(() => null);
    const ok = res.ok && body && body.status === "healthy";
    if (box) box.dataset.state = ok ? "live" : "offline";
    const bits = ["server " + (body && body.status ? String(body.status) : "HTTP " + res.status)];
    if (body) {
      if (body.pid != null) bits.push("pid " + String(body.pid));
      if (body.engine) bits.push(String(body.engine) + " hub");
      if (isNum(body.open_streams)) bits.push(body.open_streams + (isNum(body.max_streams) ? "/" + body.max_streams : "") + " streams");
    }
    bits.push("checked " + clock(new Date(), true));
    setText("health-text", bits.join(" \u00b7 "));
  } catch (err) {
    if (box) box.dataset.state = "offline";
    setText("health-text", "server unreachable \u00b7 " + clock(new Date(), true));
  }
}

function tickClock() {
  const now = new Date();
  const t = mission.lastTelemetry;
  const utc = now.toISOString().slice(11, 19);
  const parts = [];
  if (t && isNum(t.sol)) parts.push("SOL " + t.sol + " \u00b7 " + (t.local_solar_time || "--:--") + " LMST");
  parts.push("EARTH " + utc + " UTC");
  if (t && isNum(t.signal_delay_s)) parts.push("OWLT " + duration(t.signal_delay_s));
  setText("mission-clock", parts.join("  \u2022  "));
  refreshFreshness();
}

// ------------------------------------------------------------------ wiring
function init() {
  // user name
  const userField = $("user-name");
  let user = store.get("mission.user");
  if (!user || !validUser(user)) {
    user = "guest-" + randomTag(4);
    store.set("mission.user", user);
  }
  if (userField) {
    userField.value = user;
    userField.addEventListener("change", () => {
      const name = userField.value.trim();
      if (!validUser(name)) {
        roomNote("Call signs are 1\u2013" + MAX_USER + " printable characters.", "error");
        return;
      }
      store.set("mission.user", name);
      const senderField = $("broadcast-sender");
      if (senderField) senderField.placeholder = name;
      if (comms.room && name !== comms.user) joinRoom(comms.room, name).catch(noop);
    });
  }
  const senderField = $("broadcast-sender");
  if (senderField) senderField.placeholder = user;

  // rooms
  for (const b of document.querySelectorAll(".btn-room")) {
    b.setAttribute("aria-pressed", "false");
    b.addEventListener("click", () => joinRoom(b.dataset.room, currentUserField()).catch(noop));
  }
  const roomForm = $("room-form");
  if (roomForm) {
    roomForm.addEventListener("submit", (e) => {
      e.preventDefault();
      const field = $("room-name");
      joinRoom(field ? field.value : "", currentUserField()).catch(noop);
    });
  }
  const chatForm = $("chat-form");
  if (chatForm) {
    chatForm.addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("chat-input");
      if (input && submitChat(input.value)) input.value = "";
    });
  }
  const broadcastForm = $("broadcast-form");
  if (broadcastForm) {
    broadcastForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const input = $("broadcast-input");
      const sender = $("broadcast-sender");
      const who = (sender && sender.value.trim()) || currentUserField() || "anonymous";
      if (input && (await sendBroadcast(input.value, who))) input.value = "";
    });
  }
  const reload = $("image-reload");
  if (reload) reload.addEventListener("click", () => { loadImage(); });

  const list = $("broadcast-log");
  if (list && !list.children.length) {
    const li = document.createElement("li");
    li.className = "broadcast-empty";
    li.textContent = "No broadcasts yet.";
    list.appendChild(li);
  }

  // Leave the room cleanly when the page goes away (the server sees a 1000, not a dropped connection).
  window.addEventListener("pagehide", () => {
    if (comms.client) comms.client.close(1000, "page closed");
    if (feed) feed.close();
  });
  window.addEventListener("pageshow", (e) => {
    if (!e.persisted) return;  // back from the back/forward cache: the links were closed on pagehide
    openFeed(feed ? feed.lastEventId : null);
    if (comms.room) joinRoom(comms.room, comms.user).catch(noop);  // the closed client is replaced
  });

  setWsState("connecting");
  setSseState("connecting");
  backfillTelemetry();
  openFeed(null);
  let room = store.get("mission.room");
  if (!room || roomProblem(room)) room = "engineering";
  joinRoom(room, user).catch(noop);
  loadImage();
  checkHealth();
  setInterval(checkHealth, 30000);
  tickClock();
  setInterval(tickClock, 1000);
}

init();
