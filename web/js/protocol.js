// Wire format shared with xnect_app/server/schemas.py (protocol version 1).
// Binary frames: "XNF1" | uint32 frame_id | float64 timestamp_ms (big-endian) | JPEG bytes.

export const PROTOCOL_VERSION = 1;
export const HEADER_BYTES = 16;
const MAGIC = [0x58, 0x4e, 0x46, 0x31]; // "XNF1"

export function packFrame(frameId, timestampMs, jpegBuffer) {
  const out = new Uint8Array(HEADER_BYTES + jpegBuffer.byteLength);
  const view = new DataView(out.buffer);
  MAGIC.forEach((b, i) => view.setUint8(i, b));
  view.setUint32(4, frameId >>> 0, false);
  view.setFloat64(8, timestampMs, false);
  out.set(new Uint8Array(jpegBuffer), HEADER_BYTES);
  return out.buffer;
}

export function unpackFrame(buffer) {
  const view = new DataView(buffer);
  for (let i = 0; i < MAGIC.length; i++) {
    if (view.getUint8(i) !== MAGIC[i]) throw new Error("binary message without XNF1 header");
  }
  return {
    frameId: view.getUint32(4, false),
    timestampMs: view.getFloat64(8, false),
    jpeg: new Blob([buffer.slice(HEADER_BYTES)], { type: "image/jpeg" }),
  };
}

// Websocket URL on the page's own host; the token (if any) rides in the query string.
export function socketUrl(path, params = {}) {
  const url = new URL(path, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
  }
  return url.toString();
}
