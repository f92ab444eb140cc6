// The lab's dashboard: the boards as a grid, a job's page with its live log, recent
// failures; live from the lab's event stream (/events), no reload. Everything a design or
// a caller wrote (file names, log lines, errors, owners) is put on the page as text
// (textContent), never as markup; the page's Content-Security-Policy allows no inline
// script and no other origin. No build step: this file is served as it is.
"use strict";

const $ = (id) => document.getElementById(id);
const boards = new Map(); // fpga_id -> the board as GET /fpga shows it
const failures = []; // {fpga_id, job_id, error, at}, newest first
const MAX_FAILURES = 10;
let stream = null; // the EventSource of /events
let admin = false;
// The key typed at sign-in, kept in this tab's memory only (never stored, never in a
// URL): the login cookie lets the page read; a change (maintenance) sends the key.
let key = null;

// Requests ------------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (options.body) headers["Content-Type"] = "application/json";
  if (key && options.method && options.method !== "GET") headers["X-API-Key"] = key;
  const response = await fetch(path, { credentials: "same-origin", ...options, headers: { ...headers, ...options.headers } });
  if (response.status === 401 && path !== "/login") {
    showLogin();
    throw new Error("sign in first");
  }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const detail = body?.detail;
    throw new Error(detail?.message || `${response.status} ${response.statusText}`);
  }
  return body;
}

// Elements (text only) --------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function timeLeft(iso) {
  const seconds = Math.round((Date.parse(iso) - Date.now()) / 1000);
  if (seconds <= 0) return "ending";
  const m = Math.floor(seconds / 60), s = seconds % 60;
  return m >= 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : `${m}:${String(s).padStart(2, "0")}`;
}

// The grid --------------------------------------------------------------------------------

function boardCard(b) {
  const card = el("article", {
    class: "board", id: `board-${b.fpga_id}`,
    dataset: { state: b.state, health: b.health },
  });
  card.append(
    el("div", {}, el("span", { class: "id" }, `FPGA ${b.fpga_id}`), " ",
      el("span", { class: "state" }, b.state)),
    el("div", { class: "meta" }, `health ${b.health}`, b.health_reason ? ` (${b.health_reason})` : ""),
  );
  if (b.platform) {
    const tags = (b.tags || []).join(", ");
    card.append(el("div", { class: "meta platform" }, b.platform, tags ? ` · ${tags}` : ""));
  }
  if (b.session) {
    card.append(el("div", { class: "meta" }, `held by ${b.session.owner}`),
      el("div", { class: "meta session-left", dataset: { expires: b.session.expires_at } },
        `${timeLeft(b.session.expires_at)} left`));
  }
  if (b.current_job_id) {
    card.append(el("div", { class: "meta" }, "job ",
      el("a", { href: `#job/${b.fpga_id}/${b.current_job_id}` }, b.current_job_id.slice(0, 8))));
  }
  if (!b.worker) card.append(el("div", { class: "meta" }, "no worker"));
  if (admin) {
    const down = b.health === "maintenance";
    card.append(el("button", {
      type: "button",
      onclick: () => setMaintenance(b.fpga_id, !down),
    }, down ? "back online" : "maintenance"));
  }
  return card;
}

function drawBoard(b) {
  boards.set(b.fpga_id, b);
  const card = boardCard(b);
  const old = $(`board-${b.fpga_id}`);
  if (old) old.replaceWith(card);
  else {
    const grid = $("boards");
    const after = [...grid.children].find((c) => Number(c.id.slice(6)) > b.fpga_id);
    grid.insertBefore(card, after || null);
  }
}

async function loadBoards() {
  const rows = await api("/fpga");
  $("boards").replaceChildren();
  rows.forEach(drawBoard);
}

// A change comes as several events (a submit: building, programming, reserved): a board
// is read again once per burst of them, not once per event.
const rereading = new Set();
function refreshSoon(fpgaId) {
  if (rereading.has(fpgaId)) return;
  rereading.add(fpgaId);
  setTimeout(() => { rereading.delete(fpgaId); refreshBoard(fpgaId); }, 50);
}

async function refreshBoard(fpgaId) {
  try {
    drawBoard(await api(`/fpga/${fpgaId}`));
  } catch (error) {
    console.warn(error);
  }
}

async function setMaintenance(fpgaId, down) {
  try {
    await api(`/fpga/${fpgaId}/${down ? "maintenance" : "online"}`, {
      method: "POST",
      body: JSON.stringify(down ? { reason: "set from the dashboard" } : {}),
    });
  } catch (error) {
    alert(error.message);
  }
  refreshBoard(fpgaId);
}

function noteFailure(event) {
  failures.unshift(event);
  failures.length = Math.min(failures.length, MAX_FAILURES);
  $("failures").replaceChildren(...failures.map((f) => el("li", {},
    el("a", { href: `#job/${f.fpga_id}/${f.job_id}` }, `FPGA ${f.fpga_id} · job ${f.job_id.slice(0, 8)}`),
    f.error ? ` — ${f.error}` : "")));
}

// The event stream ------------------------------------------------------------------------

function onEvent(message) {
  let event;
  try {
    event = JSON.parse(message.data);
  } catch {
    return;
  }
  if (event.fpga_id !== undefined && event.fpga_id !== null) refreshSoon(event.fpga_id);
  if (event.status === "failed" && event.job_id) noteFailure(event);
  if (event.job_id && event.job_id === shownJob?.jobId) showJobFields(shownJob.fpgaId, shownJob.jobId);
}

function setLive(state, text) {
  const live = $("live");
  live.dataset.state = state;
  live.textContent = text;
  $("lost").hidden = state !== "lost";
}

function connect() {
  if (stream) stream.close();
  stream = new EventSource("/events");
  stream.onopen = () => {
    setLive("live", "live");
    loadBoards().catch(() => {}); // what changed while the stream was away
  };
  stream.onerror = () => setLive("lost", "reconnecting…"); // EventSource retries by itself
  for (const kind of ["message", "board", "job", "session"]) stream.addEventListener(kind, onEvent);
  for (const kind of ["lagged", "gap"]) stream.addEventListener(kind, () => loadBoards().catch(() => {}));
}

// A job's page ----------------------------------------------------------------------------

let shownJob = null; // {fpgaId, jobId, source}

async function showJobFields(fpgaId, jobId) {
  const job = await api(`/fpga/${fpgaId}/jobs/${jobId}`);
  const fields = [
    ["status", job.status], ["type", job.type], ["board", `FPGA ${job.fpga_id}`],
    ["file", job.filename], ["owner", job.owner], ["created", job.created_at],
    ["finished", job.finished_at], ["error", job.error],
  ];
  $("job-fields").replaceChildren(...fields.filter(([, v]) => v).flatMap(([k, v]) => [el("dt", {}, k), el("dd", { id: `job-${k}` }, v)]));
  if (job.finished_at && shownJob?.jobId === jobId && !shownJob.waveShown) {
    shownJob.waveShown = true;
    showWaveform(fpgaId, jobId, job).catch((error) => $("waveform").append(el("p", { class: "error" }, error.message)));
  }
}

function showJob(fpgaId, jobId) {
  if (shownJob?.source) shownJob.source.close();
  $("job-title").textContent = `Job ${jobId}`;
  $("log").replaceChildren();
  $("waveform").replaceChildren();
  $("log-state").textContent = "(following)";
  showJobFields(fpgaId, jobId).catch((error) => { $("log-state").textContent = `(${error.message})`; });
  const source = new EventSource(`/fpga/${fpgaId}/jobs/${jobId}/logs?follow=true`);
  shownJob = { fpgaId, jobId, source };
  // each line is a JSON string (its control characters escaped in the stream), shown as text
  const line = (message) => {
    let text = message.data;
    try { text = JSON.parse(message.data); } catch { /* shown as it came */ }
    $("log").append(document.createTextNode(`${text}\n`));
  };
  source.addEventListener("message", line);
  source.addEventListener("line", line);
  source.addEventListener("end", (message) => {
    source.close();
    let status = "";
    try { status = JSON.parse(message.data).status; } catch { /* a line of text */ }
    const none = $("log").childNodes.length ? "" : ", no lines";
    $("log-state").textContent = status ? `(ended: ${status}${none})` : `(ended${none})`;
    showJobFields(fpgaId, jobId).catch(() => {});
  });
  source.onerror = () => { if (source.readyState !== EventSource.CLOSED) $("log-state").textContent = "(reconnecting…)"; };
}

// A traced run's waveform -----------------------------------------------------------------
// The run's VCD is read from the lab (same origin), parsed here, its bus transactions
// listed and its signals drawn as SVG: no viewer, no other origin. Names and values come
// from the file and are put on the page as text.

const MAX_STEPS = 240; // value-change times drawn; the table lists every transaction
const MAX_ROWS = 2000;

function parseVcd(text) {
  const vars = []; // {id, name, width}
  const byId = new Map();
  const times = []; // distinct times, in order
  const changes = []; // per time: [[var index, value (BigInt | null)], ...]
  let timescale = "";
  let scope = [];
  const tokens = text.split(/\s+/);
  let i = 0;
  // the words after the keyword at i, up to its $end (left at i)
  const until = (word) => { const start = ++i; while (i < tokens.length && tokens[i] !== word) i++; return tokens.slice(start, i); };
  for (; i < tokens.length; i++) {
    const t = tokens[i];
    if (!t) continue;
    if (t === "$timescale") timescale = until("$end").join(" ");
    else if (t === "$scope") scope.push(until("$end")[1]);
    else if (t === "$upscope") { until("$end"); scope.pop(); }
    else if (t === "$var") {
      const [, width, id, name] = until("$end");
      const v = { id, name: [...scope, name].join("."), width: Number(width) };
      if (!byId.has(id)) { byId.set(id, vars.length); vars.push(v); }
    } else if (t[0] === "$") {
      if (!["$dumpvars", "$dumpall", "$dumpon", "$dumpoff", "$end"].includes(t)) until("$end");
    } else if (t[0] === "#") {
      times.push(BigInt(t.slice(1)));
      changes.push([]);
    } else if (changes.length) {
      let value, id;
      if (t[0] === "b" || t[0] === "B") { value = t.slice(1); id = tokens[++i]; }
      else if (t[0] === "r" || t[0] === "R") { i++; continue; }
      else { value = t[0]; id = t.slice(1); }
      const index = byId.get(id);
      if (index === undefined) continue;
      changes[changes.length - 1].push([index, /^[01]+$/.test(value) ? BigInt("0b" + value) : null]);
    }
  }
  return { timescale, vars, times, changes };
}

// The bus's signals by their names in the analyzer's layout (docs/designs.md, Traces).
const BUS = ["cyc", "stb", "we", "adr", "sel", "dat_w", "dat_r", "ack", "err"];

function busIndex(vars) {
  const found = {};
  vars.forEach((v, index) => {
    const leaf = v.name.split(".").pop().replace(/^wb_/, "");
    if (BUS.includes(leaf) && !(leaf in found)) found[leaf] = index;
  });
  return found;
}

function transactions(wave) {
  const bus = busIndex(wave.vars);
  if (!["cyc", "stb", "we", "adr", "ack"].every((name) => name in bus)) return null;
  const now = new Array(wave.vars.length).fill(null);
  const rows = [];
  wave.times.forEach((time, step) => {
    for (const [index, value] of wave.changes[step]) now[index] = value;
    const on = (name) => name in bus && now[bus[name]] === 1n;
    const ended = on("ack") ? "ack" : on("err") ? "err" : null;
    if (on("cyc") && on("stb") && ended && rows.length < MAX_ROWS) {
      const write = on("we");
      const data = now[bus[write ? "dat_w" : "dat_r"]];
      rows.push({ time, write, word: now[bus.adr], data, ended });
    }
  });
  return rows;
}

// A VCD time in nanoseconds, from its timescale ("1 ps", "10 ns"...).
const UNITS = { s: 1e9, ms: 1e6, us: 1e3, ns: 1, ps: 1e-3, fs: 1e-6 };
function nanoseconds(timescale) {
  const m = timescale.match(/^(1|10|100)\s*(s|ms|us|ns|ps|fs)$/);
  return m ? Number(m[1]) * UNITS[m[2]] : null;
}
const at = (time, ns) => (ns === null ? `${time}` : `${Number((Number(time) * ns).toFixed(3))} ns`);

const hex = (value, width = 8) => (value === null || value === undefined ? "x" : "0x" + value.toString(16).padStart(width, "0"));

function transactionTable(rows, ns) {
  const head = el("tr", {}, ...["time", "op", "word", "data", "end"].map((h) => el("th", {}, h)));
  const body = rows.map((r) => el("tr", { class: r.ended === "err" ? "bus-error" : "" },
    el("td", {}, at(r.time, ns)), el("td", {}, r.write ? "write" : "read"),
    el("td", {}, hex(r.word, 0)), el("td", {}, hex(r.data)), el("td", {}, r.ended)));
  return el("table", { class: "transactions", id: "transactions" }, el("thead", {}, head), el("tbody", {}, ...body));
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

// Each signal a row; each value-change time a column (the analyzer stores only the cycles
// the bus is busy, so time runs in steps, labelled with the time they stand for).
function drawWave(wave, ns) {
  const steps = Math.min(wave.times.length, MAX_STEPS);
  const label = 120, col = 44, row = 22, top = 18;
  const width = label + col * steps + 4, height = top + row * wave.vars.length + 4;
  const root = svg("svg", { class: "wave", id: "wave", width, height, viewBox: `0 0 ${width} ${height}` });
  for (let s = 0; s < steps; s += 4) {
    root.append(svg("text", { x: label + col * s + 2, y: 12, class: "tick" }, at(wave.times[s], ns)));
  }
  const now = new Array(wave.vars.length).fill(undefined);
  const shown = wave.vars.map(() => []); // per signal: [step, value] where it changes
  for (let s = 0; s < steps; s++) {
    for (const [index, value] of wave.changes[s]) {
      if (now[index] !== value) { now[index] = value; shown[index].push([s, value]); }
    }
  }
  wave.vars.forEach((v, index) => {
    const y = top + row * index;
    root.append(svg("text", { x: 2, y: y + 15, class: "name" }, v.name));
    const runs = shown[index];
    runs.forEach(([s, value], k) => {
      const end = k + 1 < runs.length ? runs[k + 1][0] : steps;
      const x0 = label + col * s, x1 = label + col * end;
      if (v.width === 1) {
        const level = value === 1n ? y + 4 : y + 18;
        root.append(svg("line", { x1: x0, y1: level, x2: x1, y2: level, class: value === null ? "x" : "bit" }));
        if (k > 0) root.append(svg("line", { x1: x0, y1: y + 4, x2: x0, y2: y + 18, class: "bit" }));
      } else {
        root.append(svg("rect", { x: x0 + 1, y: y + 4, width: Math.max(1, x1 - x0 - 2), height: 14, rx: 3, class: value === null ? "x" : "bus" }));
        if (x1 - x0 > 30) root.append(svg("text", { x: x0 + 4, y: y + 15, class: "value" }, hex(value, 0)));
      }
    });
  });
  return el("div", { class: "wave-box" }, root,
    el("p", { class: "dim" }, "one column per time a value changed (the analyzer keeps the cycles the bus is busy)",
      wave.times.length > steps ? `; the first ${steps} of ${wave.times.length} drawn, the file has them all` : ""));
}

async function showWaveform(fpgaId, jobId, job) {
  const box = $("waveform");
  box.replaceChildren();
  if (job.type !== "run" || (job.status !== "complete" && job.status !== "failed")) return;
  let result;
  try { result = await api(`/fpga/${fpgaId}/jobs/${jobId}/result`); } catch { return; }
  if (!result.trace) return;
  box.append(el("h3", {}, "Waveform"));
  if (!result.trace.ok) {
    box.append(el("p", { class: "error", id: "wave-error" }, `no waveform: ${result.trace.error}`));
    return;
  }
  const path = `/fpga/${fpgaId}/jobs/${jobId}/waveform`;
  box.append(el("p", { class: "dim" },
    `${result.trace.samples} samples, ${result.trace.bytes} bytes${result.trace.full ? " (the analyzer filled up: the run's start)" : ""} · `,
    el("a", { href: path, download: `fpga${fpgaId}-${jobId}.vcd`, id: "wave-file" }, "the VCD file"),
    " (GTKWave, Surfer)"));
  const response = await fetch(path, { credentials: "same-origin" });
  if (!response.ok) { box.append(el("p", { class: "error" }, `${response.status} ${response.statusText}`)); return; }
  const wave = parseVcd(await response.text());
  const ns = nanoseconds(wave.timescale);
  const rows = transactions(wave);
  if (rows) box.append(el("h4", {}, `Bus transactions (${rows.length})`), transactionTable(rows, ns));
  box.append(el("h4", {}, "Signals"), drawWave(wave, ns));
}

// Pages -----------------------------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#job\/(\d+)\/([0-9a-f]+)$/);
  $("lab").hidden = Boolean(match);
  $("job").hidden = !match;
  if (match) showJob(Number(match[1]), match[2]);
  else if (shownJob?.source) { shownJob.source.close(); shownJob = null; }
}

function showLogin() {
  $("login").hidden = false;
  $("lab").hidden = true;
  $("job").hidden = true;
}

async function start() {
  try {
    const me = await api("/whoami").catch(() => null);
    admin = Boolean(me?.admin);
    if (me?.name) $("who").textContent = me.name + (admin ? " (admin)" : "");
    await loadBoards();
  } catch (error) {
    return; // signed out: the form is shown
  }
  $("login").hidden = true;
  route();
  connect();
}

$("login-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  $("login-error").textContent = "";
  try {
    key = $("login-key").value;
    $("login-key").value = "";
    await api("/login", { method: "POST" }); // sets the login cookie that /events needs
    start();
  } catch (error) {
    key = null;
    $("login-error").textContent = error.message;
  }
});
window.addEventListener("hashchange", route);
setInterval(() => {
  for (const node of document.querySelectorAll(".session-left")) {
    node.textContent = `${timeLeft(node.dataset.expires)} left`;
  }
}, 1000);
start();
