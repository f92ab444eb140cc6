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
}

function showJob(fpgaId, jobId) {
  if (shownJob?.source) shownJob.source.close();
  $("job-title").textContent = `Job ${jobId}`;
  $("log").replaceChildren();
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
    $("log-state").textContent = status ? `(ended: ${status})` : "(ended)";
    showJobFields(fpgaId, jobId).catch(() => {});
  });
  source.onerror = () => { if (source.readyState !== EventSource.CLOSED) $("log-state").textContent = "(reconnecting…)"; };
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
