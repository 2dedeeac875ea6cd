"use strict";
/* qvg-serve web page: sign in, create and steer streams, watch them as live tiles, and the KV
   memory chart. Vanilla JS, same-origin requests only (the CSP forbids anything else).

   Frames come over ONE Server-Sent-Events connection (/v1/feed) for the tiles on screen: a
   browser opens at most 6 connections per host, so an MJPEG <img> per tile would starve the
   page's own status requests. Tiles off the page (pagination) or out of view get no frames. */

const BASE = location.pathname.replace(/\/ui\/.*$/, "");
const PAGE_SIZE = 12;
const FINAL = new Set(["finished", "cancelled", "failed"]);
const LIST_MS = 2000, STATUS_MS = 1500, KV_MS = 1000;
const REPLAY = 16;      // a tile that appears starts this many frames before the live edge
const MAX_QUEUE = 48;   // frames waiting to be drawn; beyond it the tile skips to the edge

const $ = id => document.getElementById(id);
const state = { model: null, streams: [], page: 0, tiles: new Map(), feed: null, feedKey: "",
  visible: new Set(), chart: null, timers: [] };

class HttpError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") opts.headers["X-QVG-CSRF"] = "1";   // the CSRF rule (auth.py)
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(BASE + path, opts);
  const data = r.status === 204 ? null : await r.json().catch(() => null);
  if (r.status === 401 && path !== "/v1/session") showSignIn("Session ended: sign in again.");
  if (!r.ok) throw new HttpError(r.status, data);
  return data;
}

// ---- sign in / out ---------------------------------------------------------------------------

function showSignIn(message) {
  stopAll();
  $("app").hidden = true; $("sign-in").hidden = false; $("sign-out").hidden = true;
  $("who").textContent = "";
  $("sign-in-error").textContent = message || "";
  $("key").focus();
}

async function signIn(ev) {
  ev.preventDefault();
  const input = $("key");
  try {
    const s = await api("POST", "/v1/session", { key: input.value });
    input.value = "";           // the page keeps no copy of the key
    start(s);
  } catch (e) {
    $("sign-in-error").textContent = e.message;
  }
}

async function signOut() {
  await api("DELETE", "/v1/session").catch(() => null);
  showSignIn("Signed out.");
}

function start(session) {
  $("sign-in").hidden = true; $("app").hidden = false;
  $("who").textContent = session.auth ? `tenant ${session.tenant}` : "auth off (local)";
  $("sign-out").hidden = !session.auth;
  state.chart = new window.KvChart($("kv-chart"), $("kv-legend"), $("kv-facts"));
  loadModel();
  refreshList(); refreshKv();
  state.timers.push(setInterval(refreshList, LIST_MS), setInterval(refreshKv, KV_MS),
    setInterval(refreshStatuses, STATUS_MS), setInterval(drawFrames, 1000 / 16));
}

function stopAll() {
  state.timers.forEach(clearInterval); state.timers = [];
  closeFeed();
  state.tiles.clear(); $("tiles").replaceChildren(); state.streams = [];
}

// ---- model facts and the create form ---------------------------------------------------------

async function loadModel() {
  try { state.model = await api("GET", "/v1/model"); } catch (e) { return; }
  const m = state.model;
  $("model-name").textContent = `${m.name} model, ${m.fps} fps, ${m.frames_per_chunk} frames per chunk`;
  $("frames").max = m.max_frames_per_stream;
  $("examples").replaceChildren(...m.examples.map(p => new Option(p)));
  const words = m.vocabulary || [];
  $("vocabulary").replaceChildren(...words.map(w => {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = w;
    b.onclick = () => { const p = $("prompt"); p.value = (p.value.trim() + " " + w).trim(); p.focus(); };
    return b;
  }));
  if (m.examples.length && !$("prompt").value) $("prompt").placeholder = m.examples[0];
}

async function createStream(ev) {
  ev.preventDefault();
  $("create-error").textContent = "";
  $("create").disabled = true;
  try {
    await api("POST", "/v1/streams", {
      prompt: $("prompt").value, frames: +$("frames").value, seed: +$("seed").value,
      priority: $("priority").value,
    });
    state.page = 0;
    await refreshList();
  } catch (e) {
    $("create-error").textContent = e.message;
  } finally {
    $("create").disabled = false;
  }
}

// ---- the stream list, pages and tiles --------------------------------------------------------

async function refreshList() {
  let got;
  try { got = await api("GET", "/v1/streams"); } catch (e) { return; }
  state.streams = got.streams;
  const pages = Math.max(1, Math.ceil(state.streams.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  $("stream-count").textContent = `${state.streams.length} streams`;
  $("page-label").textContent = `page ${state.page + 1} / ${pages}`;
  $("prev").disabled = state.page === 0; $("next").disabled = state.page >= pages - 1;
  layoutTiles();
}

function pageStreams() {
  return state.streams.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
}

const observer = new IntersectionObserver(entries => {
  for (const e of entries) {
    const id = e.target.dataset.id;
    if (e.isIntersecting) state.visible.add(id); else state.visible.delete(id);
  }
  syncFeed();
});

function layoutTiles() {
  const shown = pageStreams(), ids = new Set(shown.map(s => s.id));
  for (const [id, tile] of state.tiles) {
    if (!ids.has(id)) { observer.unobserve(tile.el); tile.el.remove(); state.tiles.delete(id); state.visible.delete(id); }
  }
  const box = $("tiles");
  shown.forEach((s, i) => {
    let tile = state.tiles.get(s.id);
    if (!tile) { tile = makeTile(s); state.tiles.set(s.id, tile); observer.observe(tile.el); refreshStatus(tile); }
    tile.summary = s;
    if (box.children[i] !== tile.el) box.insertBefore(tile.el, box.children[i] || null);
    renderSummary(tile);
  });
  syncFeed();
}

function makeTile(s) {
  const el = $("tile-template").content.firstElementChild.cloneNode(true);
  el.dataset.id = s.id; el.dataset.drawn = "0";
  const tile = { el, id: s.id, next: Math.max(0, s.frames_done - REPLAY), queue: [], status: null,
    ended: s.end_reason, canvas: el.querySelector("canvas") };
  el.querySelector(".sid").textContent = s.id;
  el.querySelector(".cancel").onclick = () => act(tile, "DELETE", `/v1/streams/${s.id}`);
  el.querySelector(".steer").onsubmit = ev => {
    ev.preventDefault();
    const input = el.querySelector(".new-prompt");
    act(tile, "POST", `/v1/streams/${s.id}/actions`, { prompt: input.value }).then(() => { input.value = ""; });
  };
  el.querySelector(".mp4").href = `${BASE}/v1/streams/${s.id}/video.mp4`;
  el.querySelector(".mp4").setAttribute("download", `${s.id}.mp4`);
  return tile;
}

async function act(tile, method, path, body) {
  const err = tile.el.querySelector(".tile-error");
  err.textContent = "";
  try { await api(method, path, body); await refreshStatus(tile); await refreshList(); }
  catch (e) { err.textContent = e.message; }
}

function renderSummary(tile) {
  const s = tile.summary, st = tile.status, el = tile.el;
  const name = st ? st.state : (s.end_reason ? "ended" : "live");
  const badge = el.querySelector(".state");
  badge.textContent = name; badge.className = `state ${name}`;
  el.dataset.state = name;
  el.querySelector(".prompt").textContent = st ? st.prompt : s.prompt;
  const done = Math.max(s.frames_done, st ? st.frames_done : 0);
  el.querySelector("progress").value = done / s.frames_wanted;
  el.querySelector(".frames").textContent = `${done} / ${s.frames_wanted} frames` +
    (st ? `, ${st.chunks_done} chunks` : "") + (st && st.end_reason ? `, ${st.end_reason}` : "");
  const final = FINAL.has(name);
  el.querySelector(".cancel").disabled = final;
  el.querySelector(".steer button").disabled = final;
  el.querySelector(".mp4").classList.toggle("disabled", !(final && done > 0));
}

function renderStatus(tile) {
  const st = tile.status, rows = [];
  for (const [fmt, tiers] of Object.entries(st.pages)) {
    for (const [tier, n] of Object.entries(tiers)) {
      const bytes = (st.bytes[fmt] || {})[tier] || 0;
      rows.push([fmt, tier, `${n} pages`, `${(bytes / 1024).toFixed(0)} KiB`]);
    }
  }
  if (!rows.length) rows.push(["no KV pages held", "", "", ""]);
  tile.el.querySelector(".kv tbody").replaceChildren(...rows.map(cells => {
    const tr = document.createElement("tr");
    cells.forEach(c => { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); });
    return tr;
  }));
  const events = st.history.length ? st.history.map(h => `step ${h.step}: ${h.event}` + (h.detail ? ` (${h.detail})` : ""))
    : ["no ladder events"];
  tile.el.querySelector(".history").replaceChildren(...events.slice(-20).map(t => {
    const li = document.createElement("li"); li.textContent = t; return li;
  }));
  renderSummary(tile);
}

async function refreshStatus(tile) {
  try { tile.status = await api("GET", `/v1/streams/${tile.id}`); } catch (e) { return; }
  if (state.tiles.get(tile.id) === tile) renderStatus(tile);
}

function refreshStatuses() {
  for (const tile of state.tiles.values()) {
    const final = tile.status && FINAL.has(tile.status.state) && tile.status.end_reason;
    if (state.visible.has(tile.id) && !final) refreshStatus(tile);
  }
}

// ---- frames: one SSE feed for the tiles on screen --------------------------------------------

function wantsFrames(tile) {
  if (!state.visible.has(tile.id) || document.hidden) return false;
  return !tile.ended || tile.next < tile.summary.frames_done;
}

function syncFeed() {
  const tiles = [...state.tiles.values()].filter(wantsFrames);
  const key = tiles.map(t => t.id).sort().join(",");
  if (key === state.feedKey) return;
  closeFeed();
  state.feedKey = key;
  if (!tiles.length) return;
  const q = new URLSearchParams();
  tiles.forEach(t => { q.append("id", t.id); q.append("start", String(t.next)); });
  const es = new EventSource(`${BASE}/v1/feed?${q}`);
  es.addEventListener("frame", ev => {
    const f = JSON.parse(ev.data), tile = state.tiles.get(f.id);
    if (!tile || f.index < tile.next) return;   // a reconnect replays: keep each frame once
    tile.next = f.index + 1;
    tile.queue.push(f);
  });
  const ended = ev => {
    const d = JSON.parse(ev.data), tile = state.tiles.get(d.id);
    if (!tile) return;
    tile.ended = d.reason || "gone";
    if (ev.type === "gone") tile.next = Infinity;   // not ours (any more): never ask again
    refreshStatus(tile);
  };
  es.addEventListener("end", ended);
  es.addEventListener("gone", ended);
  es.addEventListener("done", () => { closeFeed(); syncFeed(); });
  state.feed = es;
}

function closeFeed() {
  if (state.feed) state.feed.close();
  state.feed = null; state.feedKey = "";
}

function drawFrames() {
  for (const tile of state.tiles.values()) {
    if (!tile.queue.length) continue;
    if (tile.queue.length > MAX_QUEUE) tile.queue.splice(0, tile.queue.length - REPLAY);
    const f = tile.queue.shift(), img = new Image();
    img.onload = () => {
      const c = tile.canvas;
      if (c.width !== img.width || c.height !== img.height) { c.width = img.width; c.height = img.height; }
      c.getContext("2d").drawImage(img, 0, 0);
      tile.el.dataset.drawn = String(+tile.el.dataset.drawn + 1);
      tile.el.dataset.lastFrame = String(f.index);
      if (!tile.el.dataset.firstDrawnAt) tile.el.dataset.firstDrawnAt = String(Date.now());
    };
    img.src = `data:image/jpeg;base64,${f.jpeg}`;
  }
}

// ---- KV chart --------------------------------------------------------------------------------

async function refreshKv() {
  try {
    const kv = await api("GET", "/v1/kv");
    $("kv-replica").textContent = `replica ${kv.replica}`;
    state.chart.add(kv);
  } catch (e) { /* a missed reading leaves a gap */ }
}

// ---- wiring ----------------------------------------------------------------------------------

$("sign-in-form").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", signOut);
$("create-form").addEventListener("submit", createStream);
$("prev").addEventListener("click", () => { state.page--; refreshList(); });
$("next").addEventListener("click", () => { state.page++; refreshList(); });
document.addEventListener("visibilitychange", syncFeed);

fetch(`${BASE}/v1/session`, { credentials: "same-origin" })
  .then(r => (r.ok ? r.json().then(start) : showSignIn("")))
  .catch(() => showSignIn("The server does not answer."));
