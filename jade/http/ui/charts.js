// Small line charts drawn as SVG by hand (no library): a title, the latest value of each
// series, a y scale from 0 to the largest value shown, the last N samples. A series value of
// null is a gap (no data in that interval). ``empty`` replaces the plot with a sentence
// ("no replicas") when there is nothing to draw.

const NS = "http://www.w3.org/2000/svg";
const W = 320;
const H = 110;
const PAD = { l: 44, r: 6, t: 8, b: 16 };
const MIN_SPAN = 30;
const COLORS = ["#0f6b4f", "#c2410c", "#6d28d9", "#0369a1", "#b91c1c", "#4d7c0f"];

function svg(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function ago(seconds) {
  return seconds >= 90 ? Math.round(seconds / 60) + " min" : Math.round(seconds) + " s";
}

function nice(max) {
  if (max <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= max) return m * p;
  return 10 * p;
}

export class Chart {
  // fig: a <figure>; fmt: value -> text (axis and legend)
  // every: seconds between samples (the x axis' label); axis: value -> short text
  constructor(fig, title, fmt, { axis = fmt, capacity = 150, every = 2 } = {}) {
    this.every = every;
    this.axis = axis;
    this.fig = fig;
    this.title = title;
    this.fmt = fmt;
    this.capacity = capacity;
    this.series = new Map(); // name -> array of (number|null)
    this.samples = 0;
    this.empty = null;
  }

  // values: {seriesName: number|null}; series missing from one sample get null there
  push(values) {
    for (const name of Object.keys(values)) {
      if (!this.series.has(name)) this.series.set(name, new Array(this.samples).fill(null));
    }
    for (const [name, arr] of this.series) {
      arr.push(name in values ? values[name] : null);
      if (arr.length > this.capacity) arr.shift();
    }
    this.samples = Math.min(this.samples + 1, this.capacity);
  }

  setEmpty(text) { this.empty = text; }

  draw() {
    const latest = [];
    let max = 0;
    for (const [name, arr] of this.series) {
      for (const v of arr) if (v !== null && v > max) max = v;
      const last = [...arr].reverse().find((v) => v !== null);
      latest.push([name, last === undefined ? null : last]);
    }
    const top = nice(max);
    // the x axis: the samples kept so far (at least MIN_SPAN), growing to the capacity
    const span = Math.max(MIN_SPAN, Math.min(this.capacity, this.samples));
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart" });
    root.setAttribute("aria-label", this.title);
    const ph = H - PAD.t - PAD.b;
    const pw = W - PAD.l - PAD.r;
    for (const f of [0, 0.5, 1]) {
      const y = PAD.t + ph * (1 - f);
      root.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, class: "grid" }));
      root.append(svg("text", { x: PAD.l - 4, y: y + 3, class: "axis", "text-anchor": "end" },
        this.empty ? "" : this.axis(top * f)));
    }
    root.append(svg("text", { x: PAD.l, y: H - 3, class: "axis" },
      "−" + ago(span * this.every)));
    root.append(svg("text", { x: W - PAD.r, y: H - 3, class: "axis", "text-anchor": "end" }, "now"));
    if (this.empty) {
      root.append(svg("text", { x: PAD.l + pw / 2, y: PAD.t + ph / 2 + 4, class: "empty",
                                "text-anchor": "middle" }, this.empty));
    } else {
      let i = 0;
      for (const [, arr] of this.series) {
        const color = COLORS[i++ % COLORS.length];
        let d = "";
        let pen = false;
        arr.forEach((v, k) => {
          if (v === null) { pen = false; return; }
          const x = PAD.l + pw * ((span - arr.length + k) / (span - 1));
          const y = PAD.t + ph * (1 - v / top);
          d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
          pen = true;
        });
        if (d) root.append(svg("path", { d, stroke: color, fill: "none", "stroke-width": 1.6 }));
      }
    }
    const legend = document.createElement("figcaption");
    const head = document.createElement("b");
    head.textContent = this.title;
    legend.append(head);
    if (this.empty) {
      const s = document.createElement("span");
      s.className = "muted";
      s.textContent = " " + this.empty;
      legend.append(s);
    } else {
      latest.forEach(([name, v], k) => {
        const s = document.createElement("span");
        s.className = "legend";
        const sw = document.createElement("i");
        sw.className = "swatch c" + (k % COLORS.length);
        s.append(sw, (this.series.size > 1 || name ? name + " " : "") + (v === null ? "–" : this.fmt(v)));
        legend.append(s);
      });
    }
    this.fig.replaceChildren(legend, root);
  }
}
