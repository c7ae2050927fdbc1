// crew-budget dashboard: renders /api/events (Server-Sent Events), falling back
// to polling /api/snapshot. Every string from the ledger goes in via
// textContent, never innerHTML: role and model names are not trusted markup.
"use strict";

const $ = (id) => document.getElementById(id);
let last = null;
let skew = 0;
let chart = null;
let chartRoles = "";

function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const kid of kids) {
    if (kid === null || kid === undefined) continue;
    node.append(kid instanceof Node ? kid : String(kid));
  }
  return node;
}

const usd = (s) => (s === null || s === undefined ? "no limit" : "$" + s);

function until(ts, now) {
  let s = Math.max(0, Math.floor(ts - now));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  return `${m}m ${String(s).padStart(2, "0")}s`;
}

function timeOf(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

function renderGauges(snap, now) {
  const box = $("gauges");
  box.replaceChildren();
  if (!snap.gauges.length) {
    box.append(el("p", { class: "empty" }, "No budgets configured: add limits under roles:, crew: or global: in budgets.yaml."));
    return;
  }
  for (const g of snap.gauges) {
    const pct = parseFloat(g.used_pct);
    const limit = g.limit_usd === null ? 0 : parseFloat(g.limit_usd);
    const spentW = limit ? Math.min(100, (parseFloat(g.spent_usd) / limit) * 100) : 0;
    const resW = limit ? Math.min(100 - spentW, (parseFloat(g.reserved_usd) / limit) * 100) : 0;
    const level = pct >= 100 ? "bad" : pct >= 80 ? "warn" : "ok";
    const card = el("div", { class: `card gauge ${level}`, "data-scope": g.scope, "data-window": g.window },
      el("span", { class: "pct" }, g.limit_usd === null ? "" : `${g.used_pct}%`),
      el("div", { class: "scope" }, g.scope),
      el("div", { class: "muted" }, `${g.window} ${g.period} · limit ${usd(g.limit_usd)}`),
      el("div", { class: "bar" },
        el("span", { class: "spent", style: `width:${spentW}%` }),
        el("span", { class: "reserved", style: `left:${spentW}%;width:${resW}%` })),
      el("div", { class: "nums" },
        el("div", {}, el("b", { class: "spent-usd" }, usd(g.spent_usd)), el("span", { class: "muted" }, "spent")),
        el("div", {}, el("b", { class: "reserved-usd" }, usd(g.reserved_usd)), el("span", { class: "muted" }, "reserved")),
        el("div", {}, el("b", { class: "left-usd" }, usd(g.left_usd)), el("span", { class: "muted" }, "left"))),
      el("div", { class: "resets muted" }, "resets in ",
        el("span", { class: "countdown", "data-ts": g.resets_at }, until(g.resets_at, now)),
        ` (${new Date(g.resets_at * 1000).toLocaleString([], { hour12: false })})`));
    box.append(card);
  }
}

function table(id, head, rows, empty) {
  const t = $(id);
  t.replaceChildren();
  t.append(el("tr", {}, ...head.map(([h, num]) => el("th", { class: num ? "num" : "" }, h))));
  if (!rows.length) {
    t.append(el("tr", {}, el("td", { class: "empty", colspan: head.length }, empty)));
    return;
  }
  for (const r of rows) t.append(el("tr", {}, ...r.map((c, i) => el("td", { class: head[i][1] ? "num" : "" }, c))));
}

function breakdown(id, rows, key, total, empty = "no calls in the last 24 hours") {
  table(id, [[key, false], ["spent", true], ["", false], ["calls", true], ["blocked", true]],
    rows.map((r) => [r[key], usd(r.spent_usd),
      el("span", { class: "mini", style: `width:${total ? Math.round((r.spent_nano / total) * 120) : 0}px` }),
      r.calls, r.blocked]),
    empty);
}

const PALETTE = ["#2e7dd7", "#2e9d5b", "#d9961a", "#8e55c9", "#d2413a", "#1aa3a3", "#7a8797"];

function renderChart(snap) {
  const box = $("hourly");
  if (typeof uPlot === "undefined") return;
  const roles = Object.keys(snap.spend.by_hour);
  const xs = snap.spend.hours.map((h) => h + 1800);
  // Stacked bars: series i is the running sum of roles[0..i]; the tallest is
  // drawn first so each shorter one sits on top of it. The legend shows each
  // role's own dollars, not the running sum.
  const own = roles.map((r) => snap.spend.by_hour[r].map((n) => n / 1e9));
  const stacked = [];
  own.forEach((s, i) => stacked.push(s.map((v, j) => v + (i ? stacked[i - 1][j] : 0))));
  const order = roles.map((_, i) => i).reverse();
  const data = [xs, ...order.map((i) => stacked[i])];
  if (!roles.length) data.push(xs.map(() => 0));
  const key = roles.join("\u0000");
  const width = Math.max(320, box.clientWidth - 4);
  if (chart && key === chartRoles) {
    chart.setData(data);
    return;
  }
  if (chart) chart.destroy();
  chartRoles = key;
  const bars = uPlot.paths.bars({ size: [0.7, 60] });
  const series = [{ value: (u, v) => (v === null ? "" : timeOf(v - 1800).slice(0, 5)) }];
  if (!roles.length) series.push({ label: "no spend", stroke: "#ccc", paths: bars, points: { show: false } });
  order.forEach((i) => series.push({
    label: roles[i],
    stroke: PALETTE[i % PALETTE.length],
    fill: PALETTE[i % PALETTE.length] + "cc",
    paths: bars,
    points: { show: false },
    value: (u, v, s, idx) => (idx === null || idx === undefined ? "" : "$" + own[i][idx].toFixed(6).replace(/0+$/, "").replace(/\.$/, "")),
  }));
  chart = new uPlot({
    width, height: 220, series,
    scales: { x: { time: true } },
    axes: [{}, { values: (u, ticks) => ticks.map((t) => (t === 0 ? "$0" : "$" + t.toPrecision(2))), size: 64 }],
    legend: { live: false },
    cursor: { drag: { x: false, y: false } },
  }, data, box);
}

function render(snap) {
  last = snap;
  skew = Date.now() / 1000 - snap.now;
  const now = snap.now;
  $("ledger").textContent = snap.ledger;
  $("clock").textContent = `${snap.now_iso.slice(0, 19).replace("T", " ")} UTC`;
  renderGauges(snap, now);
  const total = snap.spend.total_nano;
  $("total-spend").textContent = usd(snap.spend.total_usd);
  $("calls").textContent = snap.spend.by_role.reduce((a, r) => a + r.calls, 0);
  $("blocked-count").textContent = snap.blocked.length;
  $("overrun-count").textContent = snap.overruns.count;
  breakdown("by-role", snap.spend.by_role, "role", total);
  breakdown("by-model", snap.spend.by_model, "model", total);
  table("blocked", [["time", false], ["role", false], ["model", false], ["scope", false], ["estimate", true]],
    snap.blocked.map((b) => [timeOf(b.ts), b.role, b.model, b.scope || "", usd(b.estimate_usd)]),
    "no call was blocked in the last 24 hours");
  table("overruns", [["time", false], ["role", false], ["model", false], ["what", false], ["reserved", true], ["cost", true], ["over", true]],
    snap.overruns.calls.map((o) => [timeOf(o.ts), o.role, o.model, o.kind, usd(o.estimate_usd), usd(o.cost_usd), usd(o.over_usd)]),
    "none: every call cost at most what was reserved for it");
  breakdown("by-run", snap.runs.by_run, "run", total, "no run in the last 24 hours");
  breakdown("by-task", snap.runs.by_task, "task", total, "no named task in the last 24 hours");
  table("live-limits", [["role", false], ["limit", false], ["set by", false], ["reason", false], ["until", false]],
    snap.live_limits.map((o) => [o.role, o.kind === "paused" ? "paused" : `${o.kind} ${usd(o.limit_usd)}`,
      o.who, o.reason || "", o.until ? timeOf(o.until) : "until lifted"]),
    "none: every role runs on its YAML limits");
  const feed = $("alerts");
  feed.replaceChildren();
  if (!snap.alerts.length) feed.append(el("li", { class: "empty" }, "no alert: every budget is below its first threshold"));
  for (const a of snap.alerts) {
    feed.append(el("li", { class: a.severity },
      el("div", { class: "title" }, a.title), el("div", { class: "muted" }, a.message)));
  }
  renderChart(snap);
}

function status(ok, text) {
  const b = $("live");
  b.className = "badge " + (ok ? "on" : "off");
  b.textContent = text;
}

function banner(text) {
  const b = $("banner");
  b.hidden = !text;
  b.textContent = text || "";
}

function onSnapshot(body, isError) {
  const snap = JSON.parse(body);
  if (isError || snap.error) {
    status(false, "ledger unreachable");
    banner(snap.error || "the ledger cannot be read");
    return;
  }
  banner("");
  status(true, "live");
  render(snap);
}

let polling = null;
function poll(interval) {
  if (polling) return;
  const tick = async () => {
    try {
      const r = await fetch("/api/snapshot", { cache: "no-store", credentials: "same-origin" });
      onSnapshot(await r.text(), !r.ok);
    } catch (e) {
      status(false, "disconnected");
    }
  };
  tick();
  polling = setInterval(tick, interval);
}

function connect() {
  if (!window.EventSource) return poll(1000);
  const es = new EventSource("/api/events");
  es.onmessage = (e) => onSnapshot(e.data, false);
  es.addEventListener("ledger-error", (e) => onSnapshot(e.data, true));
  es.onerror = () => status(false, "reconnecting\u2026");
}

// Countdowns tick every second between snapshots, on the ledger's clock.
setInterval(() => {
  if (!last) return;
  const now = Date.now() / 1000 - skew;
  for (const c of document.querySelectorAll(".countdown")) c.textContent = until(parseFloat(c.dataset.ts), now);
}, 1000);

window.addEventListener("resize", () => { if (chart) chart.setSize({ width: Math.max(320, $("hourly").clientWidth - 4), height: 220 }); });
connect();
