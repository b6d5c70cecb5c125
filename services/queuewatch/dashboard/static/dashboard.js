// queuewatch dashboard: renders /api/crossings, /api/health and /api/lane with DOM calls only.
// Source names and notes are what anyone sent, so nothing is ever parsed as HTML
// (textContent, never innerHTML). No library: one table, two kinds of SVG line.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const ARROWS = { rising: "\u2191 rising", falling: "\u2193 falling", steady: "\u2192 steady",
  unknown: "\u00b7 unknown" };
const LANE_FIELDS = ["crossing_id", "from_country", "to_country", "traffic_class"];

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function shown(value) {
  return value === null || value === undefined || value === "" ? "\u2013" : String(value);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "\u2013";
  const s = Number(seconds);
  if (s < 120) return s + " s ago";
  if (s < 7200) return Math.floor(s / 60) + " min ago";
  if (s < 172800) return (s / 3600).toFixed(1) + " h ago";
  return Math.floor(s / 86400) + " days ago";
}

function laneKey(row) { return LANE_FIELDS.map((f) => row[f]).join("|"); }

function cell(field, value, text, cls) {
  const td = el("td", { "data-field": field }, text === undefined ? shown(value) : text);
  if (value !== null && value !== undefined) td.setAttribute("data-value", String(value));
  if (cls) td.className = cls;
  return td;
}

function sparkline(points, width, height) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const known = points.filter((p) => p[1] !== null).map((p) => [Number(p[0]), Number(p[1])]);
  svg.setAttribute("data-points", String(points.length));
  if (known.length < 2) return svg;
  const t0 = known[0][0], t1 = known[known.length - 1][0];
  const top = Math.max(...known.map((p) => p[1]), 1);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", known.map(([t, v]) =>
    `${((t - t0) / Math.max(1, t1 - t0) * (width - 2) + 1).toFixed(1)},` +
    `${(height - 1 - v / top * (height - 2)).toFixed(1)}`).join(" "));
  svg.appendChild(line);
  const title = document.createElementNS(SVG, "title");
  title.textContent = `median wait, 1 h windows: max ${top} min`;
  svg.appendChild(title);
  return svg;
}

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function renderLanes(data) {
  const body = document.querySelector("#lanes tbody");
  const rows = data.lanes.map((lane) => {
    const tr = el("tr", { "data-lane": laneKey(lane) });
    tr.appendChild(cell("crossing_id", lane.crossing_id));
    tr.appendChild(cell("direction", null, `${lane.from_country} \u2192 ${lane.to_country}`));
    tr.appendChild(cell("traffic_class", lane.traffic_class));
    tr.appendChild(cell("status", lane.status, undefined, "status-" + lane.status));
    tr.appendChild(cell("wait_now", lane.wait_now, undefined, "num"));
    tr.appendChild(cell("queue_now", lane.queue_now, undefined, "num"));
    tr.appendChild(cell("queue_km_now", lane.queue_km_now, undefined, "num"));
    tr.appendChild(cell("wait_trend", lane.wait_trend, ARROWS[lane.wait_trend] || lane.wait_trend,
      "trend-" + lane.wait_trend));
    const spark = el("td", { "data-field": "sparkline" });
    spark.appendChild(sparkline(lane.sparkline || [], 120, 24));
    tr.appendChild(spark);
    const fresh = cell("last_report_at", lane.last_report_at,
      age(lane.freshness_s) + (Number(lane.stale) ? " (stale)" : ""),
      Number(lane.stale) ? "stale" : "");
    fresh.title = lane.last_report_at + " UTC";
    tr.appendChild(fresh);
    tr.appendChild(cell("reports_3h", lane.reports_3h,
      `${shown(lane.reports_3h)} / ${shown(lane.sources_3h)}`, "num"));
    const conf = cell("confidence", lane.confidence, undefined, "conf-" + lane.confidence);
    conf.title = (lane.confidence_reasons || []).join("; ");
    tr.appendChild(conf);
    tr.addEventListener("click", () => { location.hash = "lane=" + laneKey(lane); });
    return tr;
  });
  body.replaceChildren(...rows);
  document.getElementById("updated").textContent =
    `${data.lanes.length} lanes, updated ${new Date(data.generated_at * 1000).toISOString()
      .slice(11, 19)} UTC`;
}

function renderHealth(h) {
  const box = document.getElementById("health");
  if (h.checked_at === null || h.checked_at === undefined) {
    box.className = "health unknown";
    box.textContent = "pipeline health: checking\u2026";
    return;
  }
  const lag = (h.groups || []).map((g) => `${g.group} lag ${shown(g.lag)}`).join(", ");
  const parts = [h.healthy ? "pipeline healthy" : "pipeline UNHEALTHY", lag,
    `dead letters ${shown(h.dead_letters)}`];
  if ((h.stalled || []).length) parts.push("STALLED: " + h.stalled.join(", "));
  box.className = "health " + (h.healthy ? "ok" : "bad");
  box.textContent = parts.filter(Boolean).join(" \u00b7 ");
  box.title = (h.problems || []).join("\n") + `\nchecked ${shown(h.age_s)} s ago`;
  box.setAttribute("data-healthy", h.healthy ? "1" : "0");
}

function chart(svg, windows) {
  svg.replaceChildren();
  const pts = windows.map((w) => [Date.parse(w.start_at.replace(" ", "T") + "Z"),
    w.wait_p50 === null ? null : Number(w.wait_p50),
    w.wait_p90 === null ? null : Number(w.wait_p90)]);
  const known = pts.filter((p) => p[1] !== null);
  if (known.length === 0) return;
  const t0 = pts[0][0], t1 = pts[pts.length - 1][0];
  const top = Math.max(...pts.map((p) => Math.max(p[1] || 0, p[2] || 0)), 1);
  const x = (t) => 40 + (t - t0) / Math.max(1, t1 - t0) * 750;
  const y = (v) => 190 - v / top * 175;
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", known.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`)
    .join(" "));
  svg.appendChild(line);
  for (const p of pts.filter((q) => q[2] !== null)) {
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", x(p[0]).toFixed(1));
    dot.setAttribute("cy", y(p[2]).toFixed(1));
    dot.setAttribute("r", "2");
    svg.appendChild(dot);
  }
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", "2");
  label.setAttribute("y", "14");
  label.textContent = `${Math.round(top)} min`;
  svg.appendChild(label);
}

async function renderDetail(key) {
  const section = document.getElementById("detail");
  const [crossing, from, to, cls] = key.split("|");
  const query = new URLSearchParams({ crossing, from, to, class: cls });
  const data = await getJson("/api/lane?" + query.toString());
  document.getElementById("detail-title").textContent =
    `${crossing}, ${from} \u2192 ${to}, ${cls}`;
  chart(document.getElementById("detail-chart"), data.windows);
  const windows = data.windows.map((w) => {
    const tr = el("tr");
    tr.appendChild(cell("start_at", w.start_at));
    for (const f of ["reports", "sources", "wait_p50", "wait_p90", "wait_max", "queue_max",
      "consensus_wait"]) {
      tr.appendChild(cell(f, w[f], undefined, "num"));
    }
    tr.appendChild(cell("confidence_grade", w.confidence_grade, undefined,
      "conf-" + w.confidence_grade));
    return tr;
  });
  document.querySelector("#detail-windows tbody").replaceChildren(...windows);
  const reports = data.reports.map((r) => {
    const tr = el("tr");
    tr.appendChild(cell("observed_at", r.observed_at));
    tr.appendChild(cell("source_type", r.source_type));
    tr.appendChild(cell("source_name", r.source_name));
    for (const f of ["wait_minutes", "queue_vehicles", "queue_length_km"]) {
      tr.appendChild(cell(f, r[f], undefined, "num"));
    }
    tr.appendChild(cell("status", r.status));
    tr.appendChild(cell("note", r.note));
    return tr;
  });
  document.querySelector("#detail-reports tbody").replaceChildren(...reports);
  section.hidden = false;
  document.body.setAttribute("data-detail", key);
}

function showError(message) {
  const box = document.getElementById("error");
  box.hidden = !message;
  box.textContent = message ? "Could not load the figures: " + message + " (retrying)" : "";
}

async function refresh() {
  try {
    const [lanes, health] = await Promise.all([getJson("/api/crossings"),
      getJson("/api/health")]);
    renderLanes(lanes);
    renderHealth(health);
    const hash = decodeURIComponent(location.hash.slice(1));
    const detail = hash.startsWith("lane=");
    if (detail) await renderDetail(hash.slice(5));
    document.getElementById("detail").hidden = !detail;
    document.getElementById("lanes").hidden = detail;
    showError(null);
    document.body.setAttribute("data-ready", "1");
  } catch (err) {
    showError(err.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const every = Number(document.body.getAttribute("data-refresh-s")) || 15;
  document.getElementById("detail-close").addEventListener("click", (e) => {
    e.preventDefault();
    location.hash = "";
  });
  window.addEventListener("hashchange", refresh);
  refresh();
  setInterval(refresh, every * 1000);
});
