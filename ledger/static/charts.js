// charts.js: the dashboard's pictures, as inline SVG (no dependencies, nothing loaded).
//   stageTimeline(events, now)  a session's stages to scale: a row per stage, a bar per visit
//   barChart(items, options)    bars over labelled categories, with a y axis (stacked series)

const SVG = "http://www.w3.org/2000/svg";

// The pipeline's order, which is also the order of the rows and of the stage figures.
export const STAGES = ["uploaded", "queued", "transcribing", "diarizing", "analyzing"];

function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

// 250 ms, 1.2 s, 45 s, 3 min 20 s, 2 h 5 min: what a person reads at a glance.
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 10) return `${Math.round(seconds * 10) / 10} s`;
  if (seconds < 59.5) return `${Math.round(seconds)} s`;
  if (seconds < 3570) {  // rounded to whole seconds first, so 119.6 s is 2 min, not 1 min 60 s
    const whole = Math.round(seconds), minutes = Math.floor(whole / 60), rest = whole % 60;
    return rest ? `${minutes} min ${rest} s` : `${minutes} min`;
  }
  const whole = Math.round(seconds / 60), hours = Math.floor(whole / 60), minutes = whole % 60;
  return minutes ? `${hours} h ${minutes} min` : `${hours} h`;
}

// Round tick steps (1, 2, 5 x 10^n) so that about `count` ticks span `max`.
function ticks(max, count = 4) {
  if (max <= 0) return [0];
  const rough = max / count;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough);
  const values = [];
  for (let value = 0; value <= max + step / 2; value += step) values.push(Math.round(value * 1e6) / 1e6);
  return values;
}

// Visits of one session: runs of events with one status, each until the next run begins.
export function visits(events, now) {
  const runs = [];
  for (const event of events) {
    const at = new Date(event.recorded_at).getTime() / 1000;
    const last = runs[runs.length - 1];
    if (last && last.status === event.status) continue;
    if (last) last.end = at;
    runs.push({ status: event.status, start: at, end: null, event });
  }
  const open = runs[runs.length - 1];
  if (open) open.end = now;
  return runs;
}

export function stageTimeline(events, now = Date.now() / 1000, width = 720) {
  const runs = visits(events, now);
  const stages = runs.filter((r) => STAGES.includes(r.status));
  const ending = runs.find((r) => r.status === "processed" || r.status === "failed");
  const start = runs.length ? runs[0].start : now;
  const end = ending ? ending.start : now;
  const span = Math.max(end - start, 1e-3);
  const left = 100, right = 20, row = 26, top = 10;
  const rows = STAGES.filter((s) => stages.some((r) => r.status === s));
  const height = top + row * Math.max(rows.length, 1) + 34;
  const x = (t) => left + (width - left - right) * (t - start) / span;
  const chart = svg("svg", { width, height, class: "chart timeline", role: "img",
    "aria-label": "time spent in each stage" });
  rows.forEach((status, i) => {
    const y = top + i * row;
    chart.append(svg("text", { x: 0, y: y + 16, class: "label" }, status));
    const mine = stages.filter((r) => r.status === status);
    mine.forEach((run, n) => {
      const x0 = x(run.start), x1 = Math.max(x(Math.min(run.end ?? end, end)), x0 + 2);
      const bar = svg("rect", { x: x0, y: y + 4, width: x1 - x0, height: row - 10,
        class: `bar stage ${status}${n > 0 ? " retry" : ""}`, "data-status": status });
      bar.append(svg("title", {}, `${status}${n > 0 ? ` (visit ${n + 1})` : ""}: ` +
        duration((run.end ?? end) - run.start)));
      chart.append(bar);
    });
  });
  const axisY = top + row * Math.max(rows.length, 1) + 4;
  chart.append(svg("line", { x1: left, x2: width - right, y1: axisY, y2: axisY, class: "axis" }));
  for (const t of ticks(span, 5)) {
    if (t > span) continue;
    chart.append(svg("line", { x1: x(start + t), x2: x(start + t), y1: axisY, y2: axisY + 4, class: "axis" }));
    chart.append(svg("text", { x: x(start + t), y: axisY + 16, class: "tick", "text-anchor": "middle" },
      duration(t)));
  }
  if (ending) {
    const failed = ending.status === "failed";
    const marker = svg("line", { x1: x(end), x2: x(end), y1: top, y2: axisY,
      class: `marker ${failed ? "failed" : "processed"}`, id: "timeline-end" });
    marker.append(svg("title", {}, failed ? `failed: ${ending.event.error ?? ""}` : "processed"));
    chart.append(marker);
    // The label sits left of the marker, which is at the right edge.
    chart.append(svg("text", { x: x(end) - 4, y: top + 10, "text-anchor": "end",
      class: `end-label ${failed ? "failed" : "processed"}` },
      failed ? `failed${ending.event.error ? `: ${ending.event.error}` : ""}` : "processed"));
  }
  return chart;
}

// items: [{label, values: [n, ...]}], series: [{name, class}]; stacked bars with a y axis.
export function barChart(items, { series, width = 460, height = 200, yLabel = "" }) {
  const left = 40, bottom = 36, top = 10, right = 10;
  const totals = items.map((item) => item.values.reduce((a, b) => a + b, 0));
  const scale = ticks(Math.max(1, ...totals));
  const max = scale[scale.length - 1] || 1;
  const plotHeight = height - top - bottom;
  const slot = (width - left - right) / Math.max(items.length, 1);
  const y = (v) => top + plotHeight * (1 - v / max);
  const chart = svg("svg", { width, height, class: "chart bars", role: "img", "aria-label": yLabel,
    "data-items": items.length });
  for (const value of scale) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(value), y2: y(value), class: "grid" }));
    chart.append(svg("text", { x: left - 4, y: y(value) + 4, class: "tick", "text-anchor": "end" }, String(value)));
  }
  chart.append(svg("line", { x1: left, x2: left, y1: top, y2: top + plotHeight, class: "axis" }));
  chart.append(svg("line", { x1: left, x2: width - right, y1: top + plotHeight, y2: top + plotHeight, class: "axis" }));
  const every = Math.ceil(items.length / 8);  // at most about eight labels fit
  items.forEach((item, i) => {
    let base = 0;
    item.values.forEach((value, s) => {
      if (value > 0) {
        const bar = svg("rect", { x: left + i * slot + slot * 0.15, y: y(base + value), width: slot * 0.7,
          height: y(base) - y(base + value), class: `bar ${series[s].class}`, "data-value": value });
        bar.append(svg("title", {}, `${item.label}: ${value} ${series[s].name}`));
        chart.append(bar);
      }
      base += value;
    });
    if (i % every === 0) {
      chart.append(svg("text", { x: left + i * slot + slot / 2, y: height - bottom + 16, class: "tick",
        "text-anchor": "middle" }, item.label));
    }
  });
  if (yLabel) chart.append(svg("text", { x: left, y: height - 4, class: "tick" }, yLabel));
  return chart;
}
