// Browser capture: webcam frames -> JPEG -> server, at most `maxInFlight` frames unanswered.
// Each sent frame is kept (as an ImageBitmap) until its answer arrives, so the overlay is drawn
// on exactly the frame the poses were computed from.

import { packFrame } from "./protocol.js";

const MIN_SEND_INTERVAL_MS = 33; // without requestVideoFrameCallback: at most ~30 fps
const ANSWER_TIMEOUT_MS = 30000; // a safety net only: the server answers every frame

export class CaptureClient {
  constructor(video, { width = 640, quality = 0.8, maxInFlight = 2, onSent = () => {} } = {}) {
    this.onSent = onSent;
    this.video = video;
    this.width = width;
    this.quality = quality;
    this.maxInFlight = maxInFlight;
    this.canvas = document.createElement("canvas");
    this.sent = new Map(); // frame_id -> { bitmap, sentAt }
    this.nextId = 1;
    this.busy = false;
    this.stream = null;
    this.ws = null;
    this.timer = null;
    this.fresh = false;
    this.lastSentAt = -Infinity;
  }

  async openCamera() {
    this.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    this.video.srcObject = this.stream;
    await this.video.play();
    // Send each camera frame at most once: a dropped answer must not make us resend the same
    // picture at full speed.
    if ("requestVideoFrameCallback" in this.video) {
      const onFrame = () => {
        this.fresh = true;
        if (this.stream) this.video.requestVideoFrameCallback(onFrame);
      };
      this.video.requestVideoFrameCallback(onFrame);
    }
  }

  newFrameReady() {
    if ("requestVideoFrameCallback" in this.video) return this.fresh;
    return performance.now() - this.lastSentAt >= MIN_SEND_INTERVAL_MS;
  }

  start(ws) {
    this.ws = ws;
    this.timer = setInterval(() => this.tick(), 5);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
    this.ws = null;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    this.stream = null;
    for (const entry of this.sent.values()) entry.bitmap.close();
    this.sent.clear();
  }

  inFlight() {
    const now = performance.now();
    for (const [id, entry] of this.sent) {
      if (now - entry.sentAt > ANSWER_TIMEOUT_MS) this.release(id); // never answered: stop waiting
    }
    return this.sent.size;
  }

  async tick() {
    const v = this.video;
    if (this.busy || !this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    if (v.readyState < 2 || !v.videoWidth || this.inFlight() >= this.maxInFlight) return;
    if (!this.newFrameReady()) return;
    this.busy = true;
    this.fresh = false;
    this.lastSentAt = performance.now();
    try {
      const scale = Math.min(1, this.width / v.videoWidth);
      const w = Math.round(v.videoWidth * scale), h = Math.round(v.videoHeight * scale);
      this.canvas.width = w;
      this.canvas.height = h;
      this.canvas.getContext("2d").drawImage(v, 0, 0, w, h);
      const blob = await new Promise((resolve) => this.canvas.toBlob(resolve, "image/jpeg", this.quality));
      const bitmap = await createImageBitmap(this.canvas);
      const data = await blob.arrayBuffer();
      if (!this.ws || !this.timer) { bitmap.close(); return; } // stopped meanwhile
      const id = this.nextId++;
      const sentAt = performance.now();
      this.sent.set(id, { bitmap, sentAt });
      this.ws.send(packFrame(id, Date.now(), data));
      this.onSent(id);
    } finally {
      this.busy = false;
    }
  }

  // Called with the frame_id of every poses / dropped / error answer.
  take(frameId) {
    const entry = this.sent.get(frameId);
    if (!entry) return null;
    this.sent.delete(frameId);
    // Answers come in order, so anything older is no longer needed.
    for (const id of [...this.sent.keys()]) if (id < frameId) this.release(id);
    return entry;
  }

  release(frameId) {
    const entry = this.sent.get(frameId);
    if (entry) entry.bitmap.close();
    this.sent.delete(frameId);
  }
}
