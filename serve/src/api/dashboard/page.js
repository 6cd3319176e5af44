"use strict";
// The dashboard: polls the proxy's JSON every 2 s and draws it. Plain DOM building (textContent
// only): nothing a backend returns is ever parsed as HTML. Charts: uPlot (vendored, MIT).
const POLL_MS = 2000;
const $ = (sel, root) => (root || document).querySelector(sel);
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined && text !== null) e.textContent = text; return e; };
const fmt = (v, d) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : (typeof v === "number" ? v.toFixed(d ?? 1) : String(v));
const clock = ms => new Date(ms).toLocaleTimeString([], { hour12: false });
const gib = bytes => (bytes / 1073741824).toFixed(1) + " GiB";
const STATE_COLORS = { on: "#067647", off: "#b54708", probing: "#175cd3", auto: "#175cd3", drained: "#7a5af8", resumed: "#7a5af8", added: "#7a5af8", reloaded: "#7a5af8" };

// The key: `#key=…` in the address (moved into this browser's storage), or typed in.
// (Storage may be refused, e.g. in a frame: then the key lives as long as the page.)
let pageKey = null;
function storedKey() { try { return localStorage.getItem("tightwad-key") ?? pageKey; } catch (_) { return pageKey; } }
function storeKey(k) { pageKey = k; try { localStorage.setItem("tightwad-key", k); } catch (_) { /* this page only */ } }
const hash = new URLSearchParams(location.hash.slice(1));
if (hash.get("key")) { storeKey(hash.get("key")); hash.delete("key"); history.replaceState(null, "", location.pathname + location.search + (hash.toString() ? "#" + hash : "")); }
const AUDIT = hash.has("audit");
function authHeaders() { const k = storedKey(); return k ? { "Authorization": "Bearer " + k } : {}; }
class HttpError extends Error { constructor(status, message) { super(message); this.status = status; } }
async function call(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const r = await fetch(path, init);
  if (r.status === 401) $("#key").hidden = false;
  const text = await r.text();
  let json = null; try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
  if (!r.ok) throw new HttpError(r.status, (json && json.error && json.error.message) || (path + ": HTTP " + r.status));
  return json;
}
$("#keyButton").onclick = () => { storeKey($("#keyInput").value); $("#key").hidden = true; refresh(); };

// Confirmation, then the action; the result shows as a toast and in the timeline.
let pendingAction = null;
function confirmAction(text, action) { pendingAction = action; $("#confirmText").textContent = text; $("#confirm").hidden = false; }
$("#confirmNo").onclick = () => { pendingAction = null; $("#confirm").hidden = true; };
$("#confirmYes").onclick = async () => {
  const action = pendingAction; pendingAction = null; $("#confirm").hidden = true;
  if (action) await action();
};
let toastTimer = null;
function toast(text, bad) { const t = $("#toast"); t.textContent = text; t.className = bad ? "bad" : ""; t.hidden = false; clearTimeout(toastTimer); toastTimer = setTimeout(() => { t.hidden = true; }, 6000); }
const ACTIONS = {
  on: name => ["Force speculation ON for " + name + " (every request, whatever it costs)?", () => call("POST", "/v1/tightwad/pairings/" + encodeURIComponent(name) + "/speculation", { mode: "on" })],
  off: name => ["Force speculation OFF for " + name + " (requests go to the target untouched)?", () => call("POST", "/v1/tightwad/pairings/" + encodeURIComponent(name) + "/speculation", { mode: "off" })],
  auto: name => ["Hand " + name + "'s speculation back to the controller?", () => call("POST", "/v1/tightwad/pairings/" + encodeURIComponent(name) + "/speculation", { mode: "auto" })],
  drain: name => ["Drain " + name + "? New requests wait until you resume (at most 10 minutes).", () => call("POST", "/v1/tightwad/pairings/" + encodeURIComponent(name) + "/drain", { timeout_s: 60 })],
  resume: name => ["Resume " + name + "?", () => call("POST", "/v1/tightwad/pairings/" + encodeURIComponent(name) + "/resume")],
};
function onControl(name, act) {
  const [text, run] = ACTIONS[act](name);
  confirmAction(text, async () => {
    try { await run(); toast(act + " · " + name + ": done"); } catch (e) { toast(act + " · " + name + " refused: " + e.message, true); }
    refresh();
  });
}

// One card per pairing, made once and updated in place (the charts keep their canvases).
const cards = new Map();
function chartWidth(div) { return Math.max(200, Math.floor(div.getBoundingClientRect().width || div.parentElement.clientWidth || 300)); }
function decisionMarks(getTimeline) {
  return { hooks: { draw: [u => {
    const ctx = u.ctx, top = u.bbox.top, h = u.bbox.height;
    const [min, max] = [u.scales.x.min, u.scales.x.max];
    ctx.save(); ctx.lineWidth = 2 * devicePixelRatio; ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
    let lastLabel = -Infinity;
    for (const d of getTimeline()) {
      const t = d.at_ms / 1000; if (t < min || t > max) continue;
      const x = Math.round(u.valToPos(t, "x", true));
      ctx.strokeStyle = STATE_COLORS[d.state] || "#667085";
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + h); ctx.stroke();
      ctx.fillStyle = ctx.strokeStyle; ctx.font = (10 * devicePixelRatio) + "px system-ui";
      // Labels only where they do not run into the previous one (the list below has them all).
      if (x - lastLabel > 56 * devicePixelRatio) { ctx.fillText(d.state, x + 3 * devicePixelRatio, top + 11 * devicePixelRatio); lastLabel = x; }
    }
    ctx.restore();
  }] } };
}
function makeCard(name) {
  const node = $("#pairingTemplate").content.firstElementChild.cloneNode(true);
  node.dataset.pairing = name;
  $(".name", node).textContent = name;
  for (const b of node.querySelectorAll("button[data-act]")) b.onclick = () => onControl(name, b.dataset.act);
  $("#pairings").appendChild(node);
  const card = { node, timeline: [], plots: {} };
  const speedDiv = $(".speed", node), kDiv = $(".kplot", node), accDiv = $(".accept", node);
  card.plots.speed = new uPlot({
    width: chartWidth(speedDiv), height: 190, plugins: [decisionMarks(() => card.timeline)],
    scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.15)] } },
    series: [{}, { label: "through proxy", stroke: "#7a5af8", width: 2, spanGaps: true, value: (u, v) => fmt(v) + " tok/s" },
      { label: "target alone", stroke: "#98a2b3", width: 2, dash: [6, 4], spanGaps: true, value: (u, v) => fmt(v) + " tok/s" }],
    axes: [{}, { label: "tok/s", size: 50 }],
  }, [[], [], []], speedDiv);
  card.plots.k = new uPlot({
    width: chartWidth(kDiv), height: 150, legend: { show: false }, plugins: [decisionMarks(() => card.timeline)],
    scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(4, hi + 1)] } },
    series: [{}, { label: "k", stroke: "#175cd3", width: 2, paths: uPlot.paths.stepped({ align: 1 }) }],
    axes: [{}, { label: "k", size: 40 }],
  }, [[], []], kDiv);
  card.plots.accept = new uPlot({
    width: chartWidth(accDiv), height: 150, legend: { show: false },
    scales: { x: { time: false, range: (u, lo, hi) => [0.4, Math.max(1, hi) + 0.6] }, y: { range: [0, 1] } },
    series: [{}, { label: "acceptance", fill: "rgba(122,90,248,0.55)", stroke: "#7a5af8", paths: uPlot.paths.bars({ size: [0.7, 60] }), points: { show: false } }],
    axes: [{ label: "draft position", incrs: [1], values: (u, v) => v.map(x => String(x)) }, { label: "α", size: 40, values: (u, v) => v.map(x => Math.round(x * 100) + "%") }],
  }, [[], []], accDiv);
  cards.set(name, card);
  return card;
}
function figure(dl, label, value, title) {
  const d = el("div"); d.appendChild(el("dt", null, label));
  const dd = el("dd", null, value); dd.title = title || value; d.appendChild(dd); dl.appendChild(d);
}
function renderPairing(p, dash) {
  const card = cards.get(p.pairing) || makeCard(p.pairing);
  const c = p.controller || {};
  const mode = (dash && dash.mode && dash.mode.state) || (p.speculation_enabled ? "on" : "off");
  const forced = dash ? dash.forced : c.forced;
  const badge = $(".state", card.node);
  badge.textContent = "speculation " + mode + (forced === true || forced === false ? " (forced)" : " (auto)");
  badge.className = "badge state " + mode;
  for (const b of card.node.querySelectorAll(".group button[data-act]")) {
    const want = b.dataset.act === "auto" ? (forced === null || forced === undefined) : (b.dataset.act === "on" ? forced === true : b.dataset.act === "off" ? forced === false : false);
    b.classList.toggle("active", want);
  }
  const err = $(".target-error", card.node);
  err.hidden = !(dash && dash.target_error);
  if (dash && dash.target_error) err.textContent = "Target unreachable: " + dash.target_error;
  const dl = $(".figures", card.node); dl.replaceChildren();
  const req = p.requests || {};
  figure(dl, "through proxy", fmt(c.speculative_goodput_tok_s ?? p.speculative_tok_s) + " tok/s");
  figure(dl, "target alone", fmt(c.target_tok_s ?? p.target_only_tok_s) + " tok/s");
  figure(dl, "k", fmt(c.k, 0));
  figure(dl, "predicted", c.predicted_speedup ? fmt(c.predicted_speedup, 2) + "×" : "–");
  figure(dl, "acceptance", p.acceptance === null || p.acceptance === undefined ? "–" : fmt(p.acceptance * 100, 0) + "%");
  figure(dl, "tokens / round", fmt(p.tokens_per_round, 2));
  figure(dl, "requests", fmt((req.speculative || 0) + (req.target_only || 0) + (req.passthrough || 0) + (req.error || 0), 0),
    "speculative " + (req.speculative || 0) + " · target only " + (req.target_only || 0) + " · passthrough " + (req.passthrough || 0) + " · error " + (req.error || 0));
  figure(dl, "verification", p.verification ? (typeof p.verification === "string" ? p.verification : Object.keys(p.verification)[0]) : "–", JSON.stringify(p.verification ?? null));
  const unusable = (p.drafters || []).filter(d => d.unusable).map(d => d.url + ": " + d.unusable);
  if (unusable.length) figure(dl, "draft", (p.drafters.find(d => d.unusable) || {}).unusable, unusable.join("\n"));
  if (!dash) return;
  card.timeline = dash.timeline || [];
  const s = dash.series;
  card.plots.speed.setData([s.t, s.proxy_tok_s, s.target_tok_s]);
  card.plots.k.setData([s.t, s.k]);
  const acc = dash.acceptance_by_position || [];
  card.plots.accept.setData([acc.map((_, i) => i + 1), acc]);
  const ol = $(".timeline", card.node); ol.replaceChildren();
  const items = card.timeline.slice(-50).reverse();
  if (!items.length) ol.appendChild(el("li", "muted", "no decisions yet"));
  for (const d of items) {
    const li = el("li");
    li.appendChild(el("span", "muted", clock(d.at_ms)));
    li.appendChild(el("span", "badge " + d.state, d.state));
    const why = el("span", null, d.reason + (d.drafter ? " · " + d.drafter : "")); why.title = why.textContent;
    li.appendChild(why); ol.appendChild(li);
  }
}

function bar(parent, label, used, total, text) {
  const b = el("div", "bar"); const l = el("div", "label");
  const name = el("span", null, label); name.title = label; l.appendChild(name); l.appendChild(el("span", null, text));
  const track = el("div", "track"); const fill = el("div", "fill");
  const share = total > 0 ? Math.min(1, used / total) : 0;
  fill.style.width = (share * 100).toFixed(1) + "%"; if (share > 0.9) fill.classList.add("high");
  track.appendChild(fill); b.appendChild(l); b.appendChild(track); parent.appendChild(b);
}
function renderHosts(hosts) {
  const root = $("#hosts"); root.replaceChildren();
  if (hosts.error) { const a = el("div", "alert", "Hosts could not be asked: " + hosts.error); root.appendChild(a); }
  if (!hosts.hosts || !hosts.hosts.length) { root.appendChild(el("p", "muted", "No [[hosts]] configured: the proxy knows no agents.")); return; }
  for (const h of hosts.hosts) {
    const box = el("div", "host"); box.dataset.host = h.name;
    const title = el("h3", null, h.name + " "); title.appendChild(el("span", "muted", h.address));
    title.appendChild(document.createTextNode(" ")); title.appendChild(el("span", "badge " + (h.reachable ? "on" : "down"), h.reachable ? "reachable" : "unreachable"));
    box.appendChild(title);
    if (!h.reachable) { const a = el("div", "alert", "Agent unreachable: " + (h.error || "no answer")); a.title = h.error || ""; box.appendChild(a); root.appendChild(box); continue; }
    const s = h.status || {}, inv = s.inventory || {}, host = inv.host || {};
    for (const g of inv.gpus || []) {
      const used = g.memory_used_mib ?? 0;
      bar(box, "GPU " + g.index + " · " + g.name, used, g.memory_total_mib, g.memory_used_mib === null || g.memory_used_mib === undefined ? gib(g.memory_total_mib * 1048576) : gib(used * 1048576) + " / " + gib(g.memory_total_mib * 1048576));
    }
    if (!(inv.gpus || []).length) box.appendChild(el("div", "muted", "no GPU" + ((inv.gpu_notes || []).length ? ": " + inv.gpu_notes.join("; ") : "")));
    if (host.ram_total_bytes) bar(box, "RAM · " + (host.cpu_cores || "?") + " cores", host.ram_total_bytes - host.ram_available_bytes, host.ram_total_bytes, gib(host.ram_total_bytes - host.ram_available_bytes) + " / " + gib(host.ram_total_bytes));
    const procs = el("ul", "procs");
    for (const p of s.processes || []) {
      const li = el("li", "badge " + ({ ready: "on", starting: "probing", failed: "error", backing_off: "off" }[p.state] || ""), p.name + ": " + p.state);
      li.title = (p.kind || "") + (p.port ? " :" + p.port : "") + (p.last_error ? " · " + p.last_error : ""); procs.appendChild(li);
    }
    if (!(s.processes || []).length) procs.appendChild(el("li", "muted", "no managed processes"));
    box.appendChild(procs); root.appendChild(box);
  }
}

function renderRequests(list) {
  const filter = $("#filter").value;
  const rows = list.filter(r => !filter || r.model === filter);
  $("#requestCount").textContent = "(" + rows.length + (filter ? " of " + list.length : "") + ")";
  const body = $("#requests tbody"); body.replaceChildren();
  if (!rows.length) { const tr = el("tr"); const td = el("td", "muted", "none yet"); td.colSpan = 10; tr.appendChild(td); body.appendChild(tr); return; }
  for (const r of rows) {
    const tr = el("tr", r.served_by); tr.dataset.id = r.id;
    const cell = (cls, text, label) => { const td = el("td", cls, text); td.title = text; if (label) td.dataset.label = label; tr.appendChild(td); };
    cell("time", clock(r.at_ms)); cell("id", r.id); cell("model", r.model); cell("path", r.path); cell("reason", r.reason || "");
    cell("num", r.completion_tokens === null ? "–" : fmt(r.completion_tokens, 0), "tokens");
    cell("num", fmt(r.elapsed_ms, 0), "ms"); cell("num", fmt(r.tok_s), "tok/s"); cell("num", fmt(r.rounds, 0), "rounds");
    cell("num", r.drafted ? r.accepted + "/" + r.drafted + " (" + fmt(r.acceptance * 100, 0) + "%)" : "–", "accepted");
    body.appendChild(tr);
  }
}

let lastRequests = [];
$("#filter").onchange = () => { renderRequests(lastRequests); for (const [name, card] of cards) card.node.hidden = !!$("#filter").value && $("#filter").value !== name; };
function syncFilter(names) {
  const sel = $("#filter"); const have = new Set([...sel.options].map(o => o.value));
  for (const n of names) if (!have.has(n)) { const o = el("option", null, n); o.value = n; sel.appendChild(o); }
  // A pairing a reload removed leaves the page: its card, its charts and its filter entry.
  const keep = new Set(names);
  for (const o of [...sel.options]) if (o.value && !keep.has(o.value)) { if (sel.value === o.value) sel.value = ""; o.remove(); }
  for (const [name, card] of cards) if (!keep.has(name)) { for (const plot of Object.values(card.plots)) plot.destroy(); card.node.remove(); cards.delete(name); }
}

// The proxy's log tail, while the section is open.
let logAfter = 0;
async function refreshLogs() {
  if (!$("#logs").open) return;
  try {
    const r = await call("GET", "/v1/tightwad/logs?tail=200&after=" + logAfter);
    const pre = $("#logText"); const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    if (r.lines && r.lines.length) { pre.textContent = (pre.textContent + r.lines.map(l => typeof l === "string" ? l : (l.line ?? JSON.stringify(l))).join("\n") + "\n").slice(-100000); }
    logAfter = r.next ?? logAfter; if (atEnd) pre.scrollTop = pre.scrollHeight;
  } catch (e) { $("#logText").textContent = "The log is a control route: " + e.message; }
}
$("#logs").addEventListener("toggle", refreshLogs);

let refreshes = 0;
async function refresh() {
  try {
    const [stats, dash, hosts, requests] = await Promise.all([call("GET", "/v1/tightwad/stats"), call("GET", "/v1/tightwad/dashboard"), call("GET", "/v1/tightwad/hosts"), call("GET", "/v1/tightwad/requests")]);
    const byName = new Map((dash.pairings || []).map(d => [d.pairing, d]));
    syncFilter(stats.pairings.map(p => p.pairing));
    for (const p of stats.pairings) renderPairing(p, byName.get(p.pairing));
    renderHosts(hosts);
    lastRequests = requests.requests || []; renderRequests(lastRequests);
    $("#banner").hidden = true;
    $("#updated").textContent = "updated " + clock(Date.now()) + " · every " + POLL_MS / 1000 + " s";
    refreshes += 1;
    refreshLogs();
  } catch (e) {
    const b = $("#banner"); b.hidden = false;
    b.textContent = e instanceof HttpError ? "The proxy refused: " + e.message : "The proxy is unreachable (" + e.message + "); showing the last data, retrying every " + POLL_MS / 1000 + " s.";
    $("#updated").textContent = "stale since " + ($("#updated").textContent.replace(/^updated /, "") || "start");
  }
  if (AUDIT && refreshes >= 2) audit();
}
function resizeCharts() {
  for (const card of cards.values()) for (const [, plot] of Object.entries(card.plots)) plot.setSize({ width: chartWidth(plot.root.parentElement), height: plot.height });
}
window.addEventListener("resize", resizeCharts);

// `#audit`: the page checks itself and writes its findings into #audit (the browser test reads
// them): elements that overflow the viewport, points drawn per chart, rows listed.
function audit() {
  const vw = document.documentElement.clientWidth;
  const overflow = [];
  for (const e of document.querySelectorAll("body *")) {
    if (e.closest("[hidden]") || e.closest("template") || e.tagName === "SCRIPT") continue;
    const r = e.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.right > vw + 1 || r.left < -1) {
      let clipped = false;
      for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) { const o = getComputedStyle(a).overflowX; if (o !== "visible") { const ar = a.getBoundingClientRect(); if (ar.right <= vw + 1 && ar.left >= -1) { clipped = true; break; } } }
      if (!clipped) overflow.push(e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + (e.className && typeof e.className === "string" ? "." + e.className.split(" ").join(".") : "") + " right=" + Math.round(r.right));
    }
  }
  const charts = {};
  for (const [name, card] of cards) {
    const count = (plot, i) => (plot.data[i] || []).filter(v => v !== null && v !== undefined).length;
    charts[name] = { proxy_points: count(card.plots.speed, 1), target_points: count(card.plots.speed, 2), k_points: count(card.plots.k, 1), acceptance_bars: count(card.plots.accept, 1), timeline: card.timeline.length, canvas: !!card.node.querySelector("canvas") };
  }
  const rows = [...document.querySelectorAll("#requests tbody tr")].map(tr => ({ id: tr.dataset.id, path: ($(".path", tr) || {}).textContent, reason: ($(".reason", tr) || {}).textContent }));
  const a = $("#audit");
  a.textContent = JSON.stringify({ viewport: vw, scroll_width: document.documentElement.scrollWidth, overflow: overflow.slice(0, 20), charts, rows, refreshes });
  a.dataset.done = "1";
}

refresh();
setInterval(refresh, POLL_MS);
