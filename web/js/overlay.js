// 2D overlay: the exact frame the poses belong to, then one skeleton per person, coloured by track.

const FALLBACK_COLORS = [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200]];

export function trackColor(meta, person, index) {
  const colors = (meta && meta.track_colors_rgb) || FALLBACK_COLORS;
  const key = person.id >= 0 ? person.id : index;
  const [r, g, b] = colors[key % colors.length];
  return `rgb(${r}, ${g}, ${b})`;
}

function visible(kp) {
  return kp && kp[0] !== null && kp[1] !== null && kp[2] !== null && kp[2] > 0;
}

export class Overlay {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.counts = { frames: 0, people: 0, limbs: 0 };
  }

  // image: ImageBitmap / HTMLImageElement / canvas; msg: a "poses" message; meta: the "meta" message.
  draw(image, msg, meta) {
    const { canvas, ctx } = this;
    const w = image.width, h = image.height;
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    ctx.drawImage(image, 0, 0, w, h);
    this.counts.frames++;
    const limbs = (meta && meta.limbs_2d) || [];
    const lineWidth = Math.max(2, Math.round(Math.min(w, h) / 120));
    let drawnLimbs = 0;
    msg.people.forEach((person, i) => {
      const pts = person.kp2d_norm.map((kp) => (visible(kp) ? [kp[0] * w, kp[1] * h] : null));
      const color = trackColor(meta, person, i);
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.lineWidth = lineWidth;
      ctx.lineCap = "round";
      for (const [a, b] of limbs) {
        if (!pts[a] || !pts[b]) continue;
        ctx.beginPath();
        ctx.moveTo(pts[a][0], pts[a][1]);
        ctx.lineTo(pts[b][0], pts[b][1]);
        ctx.stroke();
        drawnLimbs++;
      }
      ctx.fillStyle = "#fff";
      for (const p of pts) {
        if (!p) continue;
        ctx.beginPath();
        ctx.arc(p[0], p[1], lineWidth * 0.8, 0, 2 * Math.PI);
        ctx.fill();
      }
      if (person.id >= 0 && pts[0]) {
        ctx.fillStyle = color;
        ctx.font = `${Math.max(12, lineWidth * 6)}px sans-serif`;
        ctx.fillText(`#${person.id}`, pts[0][0] + lineWidth * 2, pts[0][1] - lineWidth * 2);
      }
    });
    this.counts.people += msg.people.length;
    this.counts.limbs += drawnLimbs;
    return drawnLimbs;
  }
}
