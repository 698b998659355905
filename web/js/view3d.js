// 3D view: camera-space skeletons (mm; x right, y down, z forward) under an orbiting camera.
// Plain 2D canvas with a perspective projection; drag rotates, the wheel zooms.

import { trackColor } from "./overlay.js";

export class View3D {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.yaw = -0.5;
    this.pitch = 0.25;
    this.distance = 6000; // mm from the orbit centre
    this.last = null;
    this._bindMouse();
  }

  _bindMouse() {
    let drag = null;
    this.canvas.addEventListener("pointerdown", (e) => {
      drag = [e.clientX, e.clientY];
      this.canvas.setPointerCapture(e.pointerId);
    });
    this.canvas.addEventListener("pointermove", (e) => {
      if (!drag) return;
      this.yaw += (e.clientX - drag[0]) * 0.01;
      this.pitch = Math.max(-1.4, Math.min(1.4, this.pitch + (e.clientY - drag[1]) * 0.01));
      drag = [e.clientX, e.clientY];
      this.redraw();
    });
    this.canvas.addEventListener("pointerup", () => { drag = null; });
    this.canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      this.distance = Math.max(1500, Math.min(30000, this.distance * (e.deltaY > 0 ? 1.1 : 0.9)));
      this.redraw();
    }, { passive: false });
  }

  // Orbit around `centre`, then a pinhole projection onto the canvas.
  _project(p, centre) {
    const x = p[0] - centre[0], y = p[1] - centre[1], z = p[2] - centre[2];
    const cy = Math.cos(this.yaw), sy = Math.sin(this.yaw);
    const x1 = cy * x + sy * z, z1 = -sy * x + cy * z;
    const cp = Math.cos(this.pitch), sp = Math.sin(this.pitch);
    const y2 = cp * y - sp * z1, z2 = sp * y + cp * z1 + this.distance;
    if (z2 < 100) return null;
    const f = 0.9 * Math.min(this.canvas.width, this.canvas.height);
    return [this.canvas.width / 2 + (f * x1) / z2, this.canvas.height / 2 + (f * y2) / z2];
  }

  draw(msg, meta) {
    this.last = { msg, meta };
    this.redraw();
  }

  redraw() {
    const { ctx, canvas } = this;
    ctx.fillStyle = "#0d0f13";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!this.last) return;
    const { msg, meta } = this.last;
    const parents = (meta && meta.parents_3d) || [];
    const people = msg.people.filter((p) => p.kp3d_cam_mm && p.root_cam_mm && p.root_cam_mm[2] !== null);
    const centre = [0, 0, 3000];
    if (people.length) {
      for (let k = 0; k < 3; k++) centre[k] = people.reduce((s, p) => s + p.root_cam_mm[k], 0) / people.length;
    }
    this._grid(centre, people);
    people.forEach((person, i) => {
      ctx.strokeStyle = trackColor(meta, person, i);
      ctx.lineWidth = 3;
      const pts = person.kp3d_cam_mm.map((q) => (q && q[0] !== null ? this._project(q, centre) : null));
      parents.forEach((parent, j) => {
        if (parent < 0 || !pts[j] || !pts[parent]) return;
        ctx.beginPath();
        ctx.moveTo(pts[j][0], pts[j][1]);
        ctx.lineTo(pts[parent][0], pts[parent][1]);
        ctx.stroke();
      });
    });
  }

  // Floor grid under the lowest foot (largest y, since y points down), 0.5 m squares.
  _grid(centre, people) {
    let floor = centre[1] + 900;
    for (const p of people) {
      for (const q of p.kp3d_cam_mm) if (q && q[1] !== null) floor = Math.max(floor, q[1]);
    }
    const { ctx } = this;
    ctx.strokeStyle = "#2a2f3a";
    ctx.lineWidth = 1;
    for (let i = -6; i <= 6; i++) {
      const a = this._project([centre[0] + i * 500, floor, centre[2] - 3000], centre);
      const b = this._project([centre[0] + i * 500, floor, centre[2] + 3000], centre);
      const c = this._project([centre[0] - 3000, floor, centre[2] + i * 500], centre);
      const d = this._project([centre[0] + 3000, floor, centre[2] + i * 500], centre);
      for (const [p, q] of [[a, b], [c, d]]) {
        if (!p || !q) continue;
        ctx.beginPath();
        ctx.moveTo(p[0], p[1]);
        ctx.lineTo(q[0], q[1]);
        ctx.stroke();
      }
    }
  }
}
