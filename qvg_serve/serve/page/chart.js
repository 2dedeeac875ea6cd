"use strict";
/* The KV memory chart: an inline SVG redrawn from the /v1/kv readings the page keeps.
   Stacked areas: bytes the GPU arena holds, by page format. Dashed line: what the same pages
   would take in BF16. Red line: the arena's capacity. */

const SVG_NS = "http://www.w3.org/2000/svg";
const FORMAT_COLOURS = { "bf16": "#4ea1ff", "qvg-int4": "#46c37b", "qvg-int2": "#f0b429" };
const SPARE_COLOURS = ["#c77dff", "#ff8fab", "#2ec4b6", "#e76f51", "#90be6d"];
const MiB = 1 << 20;

function gpuBytes(byFormat) {
  const out = {};
  for (const [fmt, tiers] of Object.entries(byFormat || {})) out[fmt] = tiers.gpu || 0;
  return out;
}

function sum(values) { return values.reduce((a, b) => a + b, 0); }

function niceStep(max, ticks) {
  const raw = max / ticks, mag = 10 ** Math.floor(Math.log10(raw || 1));
  return [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw) || raw;
}

class KvChart {
  constructor(svg, legend, facts, windowS = 120) {
    this.svg = svg; this.legend = legend; this.facts = facts; this.windowS = windowS;
    this.points = []; this.formats = []; this.box = { x: 52, y: 10, w: 576, h: 200 };
  }

  colour(fmt) {
    if (FORMAT_COLOURS[fmt]) return FORMAT_COLOURS[fmt];
    const spare = this.formats.filter(f => !FORMAT_COLOURS[f]).indexOf(fmt);
    return SPARE_COLOURS[spare % SPARE_COLOURS.length];
  }

  add(reading) {
    const held = gpuBytes(reading.bytes), bf16 = sum(Object.values(gpuBytes(reading.bf16_equivalent_bytes)));
    for (const fmt of Object.keys(reading.pages || {}).concat(Object.keys(held)))
      if (!this.formats.includes(fmt)) this.formats.push(fmt);
    this.formats.sort((a, b) => (a === "bf16" ? -1 : b === "bf16" ? 1 : a.localeCompare(b)));
    this.points.push({ t: reading.time, held, bf16, cap: reading.capacity_bytes.gpu || 0 });
    this.points = this.points.filter(p => p.t >= reading.time - this.windowS);
    this.draw();
    this.describe(reading, held, bf16);
  }

  el(name, attrs, text) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    this.svg.appendChild(node);
    return node;
  }

  draw() {
    const { x, y, w, h } = this.box, pts = this.points;
    this.svg.replaceChildren();
    if (!pts.length) return;
    const now = pts[pts.length - 1].t, t0 = now - this.windowS;
    const top = Math.max(...pts.map(p => Math.max(p.cap, p.bf16, sum(Object.values(p.held))))) * 1.08 || 1;
    const X = t => x + ((t - t0) / this.windowS) * w, Y = b => y + h - (b / top) * h;
    const step = niceStep(top / MiB, 4);
    for (let v = 0; v * MiB <= top; v += step) {
      this.el("line", { x1: x, x2: x + w, y1: Y(v * MiB), y2: Y(v * MiB), class: "grid" });
      this.el("text", { x: x - 6, y: Y(v * MiB) + 4, "text-anchor": "end" }, `${+v.toFixed(1)} MiB`);
    }
    for (const s of [0, this.windowS / 2, this.windowS])
      this.el("text", { x: X(now - s), y: y + h + 16, "text-anchor": "middle" }, s ? `-${s} s` : "now");
    let below = pts.map(() => 0);
    for (const fmt of this.formats) {
      const above = pts.map((p, i) => below[i] + (p.held[fmt] || 0));
      const upper = pts.map((p, i) => `${X(p.t)},${Y(above[i])}`);
      const lower = pts.map((p, i) => `${X(p.t)},${Y(below[i])}`).reverse();
      this.el("polygon", { points: upper.concat(lower).join(" "), fill: this.colour(fmt),
        "fill-opacity": 0.75, "data-series": `held:${fmt}` });
      below = above;
    }
    const line = (key, attrs) => this.el("polyline", { points: pts.map(p => `${X(p.t)},${Y(p[key])}`).join(" "),
      fill: "none", "stroke-width": 2, ...attrs });
    line("bf16", { stroke: "#e6e9ee", "stroke-dasharray": "6 4", "data-series": "bf16-equivalent" });
    line("cap", { stroke: "#ff6b6b", "data-series": "capacity" });
    this.svg.dataset.points = String(pts.length);
  }

  describe(reading, held, bf16) {
    const heldAll = sum(Object.values(held)), mib = b => (b / MiB).toFixed(1);
    const items = this.formats.map(f => [this.colour(f), `${f} held`])
      .concat([["#e6e9ee", "same pages in BF16"], ["#ff6b6b", "arena capacity"]]);
    this.legend.replaceChildren(...items.map(([c, label]) => {
      const span = document.createElement("span"), sw = document.createElement("i");
      sw.style.background = c; span.append(sw, label); return span;
    }));
    const ratio = heldAll ? (bf16 / heldAll).toFixed(2) : "1.00";
    const hold = reading.bf16_would_hold;
    const b = text => { const n = document.createElement("b"); n.textContent = text; return n; };
    this.facts.replaceChildren(
      b(String(reading.resident_streams)), " streams resident now; ", b(hold === null ? "-" : String(hold)),
      " of their length would fit with BF16 pages. GPU holds ", b(`${mib(heldAll)} MiB`),
      ` for ${mib(bf16)} MiB of BF16 (x${ratio}) in a ${mib(reading.capacity_bytes.gpu || 0)} MiB arena; `,
      `${reading.live_streams} live, ${reading.waiting} waiting.`);
    this.facts.dataset.resident = String(reading.resident_streams);
    this.facts.dataset.bf16WouldHold = String(hold);
  }
}

window.KvChart = KvChart;
