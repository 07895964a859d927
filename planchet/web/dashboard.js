// The dashboard at /: every job of the server, live, from the `status` frames of one watch.
//
// One WebSocket (the JS client, which reconnects by itself) and one status frame a
// second. Each job is a card built once from the page's <template> and then updated in
// place: a text node changes only when its text does, rows of workers and errors are
// kept by key. Frames are only stored as they come; drawing waits for the next
// animation frame, which a hidden tab never gets, so a tab in the background does no
// work beyond keeping the newest frame.
//
// The token (typed in the field, or given once as #token=... in the address) stays in
// this tab's sessionStorage, never in the address. With it the watch shows each job's
// workers and errors when the token may administer the job, and the card shows its
// buttons. window.planchet holds the page's state, for scripts and tests (read it only).

import { PlanchetClient } from "/client.js";
import { drawChart } from "/web/chart.js";

const TOKEN_KEY = "planchet:dashboard:token";
const RETRY_MS = 5000; // after the connection is lost for good: start again
const SOON_S = 2; // a worker seen this recently is "now"

const $ = (id) => document.getElementById(id);
const number = new Intl.NumberFormat("en");
const decimal = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });
const rate = (value) => (value >= 100 ? number.format(Math.round(value)) : decimal.format(value));

const view = {
  connection: "connecting",
  frames: 0, // status frames received
  drawn: 0, // frames drawn
  status: null, // the newest status frame
  token: null,
  generation: 0, // the watch loop that is current
};
window.planchet = view;

/** @type {Map<string, JobCard>} */
const cards = new Map();
const url = new URL("/", location.href);
url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
const client = new PlanchetClient(url.href, { retries: Infinity });

// --- drawing helpers -------------------------------------------------------------------

/** Set an element's text only when it changes (no layout work otherwise). */
function text(el, value) {
  const next = String(value);
  if (el.textContent !== next) el.textContent = next;
}

function width(el, value) {
  if (el.style.width !== value) el.style.width = value;
}

function show(el, visible) {
  if (el.hidden === visible) el.hidden = !visible;
}

function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/**
 * Make `parent`'s children the rows of `entries`, in order, reusing the row of each key:
 * a row is created once, moved only when out of place, removed when its key goes.
 */
function syncRows(parent, rows, entries, make, fill) {
  const keep = new Set();
  let previous = null;
  for (const [key, entry] of entries) {
    keep.add(key);
    let row = rows.get(key);
    if (row === undefined) rows.set(key, (row = make(key)));
    fill(row, entry);
    const node = row.root ?? row; // a card stands for its root element
    const expected = previous === null ? parent.firstElementChild : previous.nextElementSibling;
    if (expected !== node) parent.insertBefore(node, expected);
    previous = node;
  }
  for (const [key, row] of rows) {
    if (!keep.has(key)) {
      (row.root ?? row).remove();
      rows.delete(key);
    }
  }
}

function cells(tag, count, className = "") {
  const row = document.createElement(tag);
  for (let i = 0; i < count; i++) row.append(document.createElement(tag === "tr" ? "td" : "span"));
  row.className = className;
  return row;
}

// --- a job -----------------------------------------------------------------------------

/** The input's size in items: known once read out, else estimated from its bytes. */
function totalItems(job) {
  if (job.exhausted) return job.read;
  return job.bytes_read > 0 ? Math.round((job.read * job.bytes_total) / job.bytes_read) : null;
}

function stateOf(job) {
  return job.error ? "broken" : job.state;
}

class JobCard {
  constructor(name) {
    this.name = name;
    this.root = /** @type {HTMLElement} */ ($("job-card").content.firstElementChild.cloneNode(true));
    this.root.dataset.job = name;
    const q = (selector) => this.root.querySelector(selector);
    this.f = {
      state: q(".state"), mode: q(".mode"), actions: q(".actions"), broken: q(".broken"),
      note: q(".note"), bar: q(".bar"), written: q(".bar .written"), failed: q(".bar .failed"),
      flight: q(".bar .flight"), percent: q(".percent"), of: q(".of"), eta: q(".eta"),
      rate: q(".rate-now .num"), svg: q(".chart svg"), peak: q(".peak"), since: q(".since"),
      workers: q(".workers tbody"), workersTable: q(".workers table"),
      workersCount: q(".workers .count"), workersEmpty: q(".workers .empty"),
      errors: q(".errors ol"), errorsCount: q(".errors .count"), errorsEmpty: q(".errors .empty"),
    };
    this.counts = [...this.root.querySelectorAll("[data-count]")];
    this.buttons = Object.fromEntries([...this.root.querySelectorAll("[data-op]")].map((b) => [b.dataset.op, b]));
    this.workerRows = new Map();
    this.errorRows = new Map();
    text(q(".name"), name);
    // a done job is folded; its name unfolds it
    q(".name").addEventListener("click", () => this.root.classList.toggle("open"));
    q(".worker-link").href = `/worker?job=${encodeURIComponent(name)}`;
    for (const [op, button] of Object.entries(this.buttons)) {
      button.addEventListener("click", () => steer(this, op));
    }
  }

  /** @param {import("/client/index.js").JobStatus} job @param {number} now */
  update(job, now) {
    const state = stateOf(job);
    if (this.root.dataset.state !== state) this.root.dataset.state = state;
    text(this.f.state, state);
    text(this.f.mode, job.mode === "read-write" ? "" : job.mode);
    text(this.f.broken, job.error ?? "");
    show(this.f.broken, Boolean(job.error));
    this.progress(job, state);
    text(this.f.rate, rate(job.rate));
    drawChart(this.f.svg, this.f, job.history ?? [], job.rate, now, rate);
    for (const dd of this.counts) text(dd, number.format(job[dd.dataset.count] ?? 0));
    this.root.classList.toggle("has-failed", job.failed > 0);
    this.workers(job.workers);
    this.errors(job.errors);
    this.actions(job, state);
  }

  progress(job, state) {
    const total = totalItems(job);
    const settled = job.written + job.failed;
    const share = state === "done" ? 1 : total ? Math.min(1, settled / total) : 0;
    const part = (n) => `${total ? Number(Math.min(100, (100 * n) / total).toFixed(2)) : state === "done" ? 100 : 0}%`;
    width(this.f.written, part(job.written));
    width(this.f.failed, part(job.failed));
    width(this.f.flight, part(job.in_flight));
    const percent = Math.floor(share * 100);
    this.f.bar.setAttribute("aria-valuenow", String(percent));
    text(this.f.percent, `${percent}%`);
    const of = total === null ? "?" : (job.exhausted ? "" : "about ") + number.format(total);
    text(this.f.of, `${number.format(settled)} of ${of} items`);
    let eta = "";
    if (state === "running" && job.eta_seconds != null) eta = `about ${duration(job.eta_seconds)} left`;
    else if (state === "running" && settled < (total ?? 1)) eta = "waiting for workers";
    else if (state === "paused") eta = "paused: no batch goes out";
    text(this.f.eta, eta);
  }

  workers(workers) {
    show(this.f.workersTable, Boolean(workers?.length));
    text(this.f.workersCount, workers ? workers.length : "");
    text(this.f.workersEmpty, workers === null ? "Give the job's token above to see its workers."
      : workers.length === 0 ? "No worker is connected." : "");
    show(this.f.workersEmpty, !workers?.length);
    const entries = (workers ?? []).map((w) => [w.id, w]);
    syncRows(this.f.workers, this.workerRows, entries, () => cells("tr", 8), fillWorker);
  }

  errors(errors) {
    text(this.f.errorsCount, errors?.length ? errors.length : "");
    text(this.f.errorsEmpty, errors === null ? "Give the job's token above to see its errors."
      : errors.length === 0 ? "None." : "");
    show(this.f.errorsEmpty, !errors?.length);
    // newest first; an item may fail again after a retry: the key counts repeats
    const seen = new Map();
    const entries = (errors ?? []).map((e) => {
      const key = `${e.id}:${e.attempts}:${e.error}`;
      seen.set(key, (seen.get(key) ?? 0) + 1);
      return [`${key}:${seen.get(key)}`, e];
    }).reverse();
    syncRows(this.f.errors, this.errorRows, entries, () => cells("li", 3), fillError);
  }

  actions(job, state) {
    const allowed = Boolean(view.token) && job.workers !== null;
    show(this.f.actions, allowed);
    if (!allowed) return;
    show(this.buttons.pause, state === "running");
    show(this.buttons.resume, state === "paused");
    show(this.buttons.retry, job.failed > 0 && job.mode !== "write");
  }

  /** A line under the header: what a button did, or the server's error. */
  say(message, bad = false) {
    text(this.f.note, message);
    this.f.note.classList.toggle("bad", bad);
    show(this.f.note, Boolean(message));
  }
}

function fillWorker(row, w) {
  const [kind, address, speed, done, failed, leases, flight, seen] = row.children;
  text(kind, w.kind);
  if (kind.dataset.kind !== w.kind) kind.dataset.kind = w.kind;
  if (kind.title !== (w.client ?? "")) kind.title = w.client ?? "";
  text(address, w.address ?? "–");
  text(speed, rate(w.rate));
  text(done, number.format(w.done));
  text(failed, number.format(w.failed));
  text(leases, number.format(w.leases));
  text(flight, number.format(w.in_flight));
  text(seen, w.last_seen < SOON_S ? "now" : `${duration(w.last_seen)} ago`);
  for (const cell of [speed, done, failed, leases, flight, seen]) cell.className = "n";
  failed.classList.toggle("bad", w.failed > 0);
}

function fillError(li, e) {
  const [id, attempts, message] = li.children;
  id.className = "id";
  attempts.className = "attempts";
  message.className = "message";
  text(id, `#${e.id}`);
  text(attempts, `${e.attempts} ${e.attempts === 1 ? "attempt" : "attempts"}`);
  text(message, e.error);
  if (message.title !== e.error) message.title = e.error;
}

// --- the page ----------------------------------------------------------------------------

let scheduled = false;

/** Keep the newest frame; draw it at the next animation frame (never in a hidden tab). */
function apply(status) {
  view.status = status;
  view.frames += 1;
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(render);
}

function render() {
  scheduled = false;
  const status = view.status;
  if (status === null) return;
  view.drawn = view.frames;
  const server = status.server ?? {};
  text($("version"), server.version ?? "?");
  text($("connections"), number.format(server.connections ?? 0));
  text($("workers"), number.format(server.workers ?? 0));
  text($("redis"), server.redis ?? "?");
  $("redis").classList.toggle("bad", server.redis !== "online");
  // done jobs last (folded), the others by name
  const jobs = [...status.jobs].sort((a, b) => (a.state === "done") - (b.state === "done")
    || a.job.localeCompare(b.job));
  syncRows($("jobs"), cards, jobs.map((job) => [job.job, job]),
    (name) => new JobCard(name), (card, job) => card.update(job, status.time));
  show($("no-jobs"), jobs.length === 0);
  const speed = jobs.reduce((sum, job) => sum + (stateOf(job) === "running" ? job.rate : 0), 0);
  const done = jobs.filter((job) => job.state === "done").length;
  text($("job-count"), done ? `${jobs.length} (${done} done)` : jobs.length);
  text($("speed"), rate(speed));
  document.title = speed > 0 ? `${rate(speed)} items/s · Planchet` : "Planchet";
}

function setConnection(state, title = "") {
  view.connection = state;
  document.body.dataset.connection = state;
  text($("connection"), state);
  $("connection").title = title;
}

/** (Re)start the watch with the current token; the loop before it ends at its next frame. */
function watch() {
  const mine = ++view.generation;
  (async () => {
    try {
      await client.connect();
      for await (const status of client.watch({ interval: 1, token: view.token })) {
        if (mine !== view.generation) return;
        setConnection("live");
        apply(status);
      }
    } catch (err) {
      if (mine !== view.generation) return;
      if (err.code === "unauthorized" && view.token) {
        tokenNote(err.message, true);
        useToken(null, false);
        return;
      }
      setConnection("offline", err.message);
      setTimeout(() => { if (mine === view.generation) watch(); }, RETRY_MS);
    }
  })();
}

// --- steering ------------------------------------------------------------------------------

const DONE_SAY = {
  pause: () => "Paused: no batch goes out until Resume.",
  resume: () => "Resumed.",
  retry: (answer) => `${number.format(answer.retried)} failed ${answer.retried === 1 ? "item" : "items"} went back to the queue`
    + (answer.rotated_to ? ` (the old error file is now ${answer.rotated_to}).` : "."),
};

async function steer(card, op) {
  const name = card.name;
  if (op === "delete" && !confirm(`Delete job ${name}? Its state on the server goes; `
    + "its output and error files stay on disk.")) return;
  const buttons = Object.values(card.buttons);
  for (const button of buttons) button.disabled = true;
  card.say(`${op}…`);
  try {
    const answer = await client[op](name, { token: view.token });
    card.say(op === "delete" ? "" : DONE_SAY[op](answer));
  } catch (err) {
    card.say(`${op}: ${err.code === "unauthorized" ? "not allowed: " : ""}${err.message}`, true);
  } finally {
    for (const button of buttons) button.disabled = false;
  }
}

function tokenNote(message, bad = false) {
  text($("token-note"), message);
  $("token-note").classList.toggle("bad", bad);
}

/** Keep `token` (null forgets it) in this tab and watch with it. */
function useToken(token, restart = true) {
  view.token = token || null;
  if (view.token) sessionStorage.setItem(TOKEN_KEY, view.token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("token").value = "";
  $("token").placeholder = view.token ? "token in use (this tab only)" : "admin or master token";
  show($("forget-token"), Boolean(view.token));
  if (restart) watch();
}

function start() {
  for (const el of document.querySelectorAll(".origin")) el.textContent = location.origin;
  for (const el of document.querySelectorAll(".ws")) el.textContent = url.origin.replace(/^http/, "ws");
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, fragment.get("token") ?? "");
    history.replaceState(null, "", location.pathname + location.search);
  }
  useToken(sessionStorage.getItem(TOKEN_KEY), false);
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    tokenNote(`The buttons show on the jobs this token may steer.`);
    useToken(token);
  });
  $("forget-token").addEventListener("click", () => {
    tokenNote("");
    useToken(null);
  });
  client.addEventListener("close", () => setConnection("reconnecting"));
  client.addEventListener("error", (event) => setConnection("offline", event.detail.error.message));
  watch();
}

start();
