// Page wiring: mode selector, websocket, overlay, 3D view, stats.
// URL options: ?mode=capture|broadcast &token=T &autostart=1 &width=640 &quality=0.8
// &track_high_score=S &track_max_lost=SEC &track_confirm=N &track_colour=0|1 (capture: this page's tracker)
// window.xnect exposes the state and drawing for tests and the console.

import { CaptureClient } from "./capture.js";
import { Overlay } from "./overlay.js";
import { socketUrl, unpackFrame } from "./protocol.js";
import { View3D } from "./view3d.js";

const params = new URLSearchParams(window.location.search);
const $ = (id) => document.getElementById(id);

const overlay = new Overlay($("overlay"));
const view3d = new View3D($("view3d"));
const stats = {
  posesReceived: 0, framesSent: 0, dropped: 0, errors: 0, peopleSeen: 0,
  framesDrawn: 0, skeletonsDrawn: 0, limbsDrawn: 0, lastError: null, lastPoses: null, lastDrawn: null,
  fps: 0, latencyMs: null,
};

let meta = null;
let ws = null;
let capture = null;
let broadcastFrames = new Map(); // frame_id -> ImageBitmap (broadcast mode)
let lastPosesAt = null;
let running = false;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function showStats(msg, latencyMs) {
  const now = performance.now();
  if (lastPosesAt !== null) {
    const inst = 1000 / Math.max(1, now - lastPosesAt);
    stats.fps = stats.fps ? 0.9 * stats.fps + 0.1 * inst : inst;
  }
  lastPosesAt = now;
  stats.latencyMs = latencyMs;
  $("fps").textContent = stats.fps.toFixed(1);
  $("latency").textContent = latencyMs === null ? "–" : `${latencyMs.toFixed(0)} ms`;
  const sparse = msg.computed_share == null ? "" : `, ${(100 * msg.computed_share).toFixed(0)}% computed`;
  $("server-ms").textContent = `${msg.server_ms.infer.toFixed(0)} ms infer (batch ${msg.batch_size}${sparse})`;
  $("people").textContent = msg.people.length;
  $("dropped").textContent = stats.dropped;
}

// Draw a poses message on its frame (also used with recorded messages: window.xnect.drawPoses).
function drawPoses(image, msg) {
  const limbs = overlay.draw(image, msg, meta);
  view3d.draw(msg, meta);
  stats.framesDrawn++;
  stats.lastDrawn = msg;
  stats.skeletonsDrawn += msg.people.filter((p) => p.kp2d_norm.some((k) => k[2] > 0)).length;
  stats.limbsDrawn += limbs;
  return limbs;
}

async function onBinary(buffer) {
  // Broadcast: the frame arrives just before its poses.
  const frame = unpackFrame(buffer);
  const bitmap = await createImageBitmap(frame.jpeg);
  broadcastFrames.set(frame.frameId, bitmap);
  if (broadcastFrames.size > 4) {
    const oldest = broadcastFrames.keys().next().value;
    broadcastFrames.get(oldest).close();
    broadcastFrames.delete(oldest);
  }
}

async function onText(text) {
  const msg = JSON.parse(text);
  switch (msg.type) {
    case "meta":
      meta = msg;
      $("model").textContent = msg.model;
      setStatus(`connected (${msg.mode})`);
      break;
    case "poses": {
      stats.posesReceived++;
      stats.lastPoses = msg;
      stats.peopleSeen += msg.people.length;
      let image = null, latency = null;
      if (capture) {
        const entry = capture.take(msg.frame_id);
        if (entry) {
          image = entry.bitmap;
          latency = performance.now() - entry.sentAt;
        }
      } else {
        // Binary frames decode asynchronously; give the matching one a moment to land.
        for (let i = 0; i < 20 && !broadcastFrames.has(msg.frame_id); i++) {
          await new Promise((r) => setTimeout(r, 5));
        }
        image = broadcastFrames.get(msg.frame_id) || null;
        broadcastFrames.delete(msg.frame_id);
        if (msg.client_ts) latency = Date.now() - msg.client_ts;
      }
      if (image) {
        drawPoses(image, msg);
        image.close();
      }
      showStats(msg, latency);
      break;
    }
    case "dropped":
      stats.dropped++;
      if (capture) capture.release(msg.frame_id);
      break;
    case "error":
      stats.errors++;
      stats.lastError = msg;
      if (capture && msg.frame_id !== null) capture.release(msg.frame_id);
      setStatus(`server: ${msg.message}`, true);
      break;
    case "pong":
      break;
    default:
      console.warn("unknown message", msg.type);
  }
}

async function start() {
  if (running) return;
  running = true;
  $("start").textContent = "Stop";
  const m = mode();
  const token = params.get("token");
  try {
    if (m === "capture") {
      capture = new CaptureClient($("camera"), {
        width: Number(params.get("width")) || 640,
        quality: Number(params.get("quality")) || 0.8,
        onSent: () => { stats.framesSent++; },
      });
      setStatus("opening camera…");
      await capture.openCamera();
    }
  } catch (err) {
    setStatus(`camera unavailable: ${err.message} (pages need localhost or https)`, true);
    stop();
    return;
  }
  // the page's own tracker settings (?track_confirm=1 ...) go to the server with the capture stream
  const tracking = {};
  if (m === "capture") {
    for (const k of ["track_high_score", "track_max_lost", "track_confirm", "track_colour"]) tracking[k] = params.get(k);
  }
  ws = new WebSocket(socketUrl(m === "capture" ? "ws/capture" : "ws/broadcast", { token, ...tracking }));
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    setStatus("connected");
    if (capture) capture.start(ws);
  };
  // Keep message handling in arrival order even though decoding is async.
  let chain = Promise.resolve();
  ws.onmessage = (ev) => {
    chain = chain.then(() => (typeof ev.data === "string" ? onText(ev.data) : onBinary(ev.data)))
      .catch((err) => { stats.lastError = { message: String(err) }; console.error(err); });
  };
  ws.onclose = (ev) => {
    if (running) setStatus(`disconnected (${ev.code}${ev.reason ? ": " + ev.reason : ""})`, ev.code !== 1000);
    stop(false);
  };
  ws.onerror = () => setStatus("connection failed", true);
}

function stop(closeSocket = true) {
  running = false;
  $("start").textContent = "Start";
  if (capture) capture.stop();
  capture = null;
  if (ws && closeSocket) ws.close(1000);
  ws = null;
  for (const b of broadcastFrames.values()) b.close();
  broadcastFrames = new Map();
}

$("start").addEventListener("click", () => (running ? stop() : start()));
if (params.get("mode") === "broadcast") document.querySelector('input[value="broadcast"]').checked = true;
for (const input of document.querySelectorAll('input[name="mode"]')) {
  input.addEventListener("change", () => { if (running) { stop(); start(); } });
}

// Recorded messages (tests, demos): draw `msg` over the image at `imageUrl`, with `metaMsg`.
async function drawRecorded(imageUrl, msg, metaMsg) {
  if (metaMsg) meta = metaMsg;
  const img = new Image();
  img.src = imageUrl;
  await img.decode();
  return drawPoses(img, msg);
}

window.xnect = { stats, start, stop, drawRecorded, get meta() { return meta; }, get capture() { return capture; } };
if (params.get("autostart") === "1") start();
