// The worker page: read the job from the address, start /web/runner.js in a module Web
// Worker, and show what it reports. The work itself never runs on this thread, so the
// page stays responsive however heavy the work is.
//
//   /worker?job=NAME&work=/pages/textstats.js#token=pw_...
//
// Optional query parameters: prefetch (batches in flight), batch_size, max_batch_bytes.
// The token comes in the fragment, which the browser never sends to the server; the page
// then takes it out of the address. The token and the session id are kept in this tab's
// sessionStorage (per job), so a reload resumes the session and takes its leases back
// instead of having them requeued.
//
// window.planchet holds the page's state (read it, don't write it): scripts and tests
// wait on it, e.g. `window.planchet.state === "done"`.

const MAX_ERRORS = 5;
const REPORT_EVERY_MS = 2000; // how often the whole job's report is read (GET /jobs/NAME)
const MAX_LEASES = 1000;

const FINAL = new Set(["done", "stopped", "error"]);
const NOTES = {
  done: "The job is done: thank you! You may close this tab.",
  stopped: "Stopped. The items this tab held went back to the queue; reload to start again.",
  error: "This tab has stopped working; the errors above say why.",
};

const $ = (id) => document.getElementById(id);
const number = new Intl.NumberFormat();
const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
const rate = (value) => (value >= 100 ? number.format(Math.round(value)) : decimal.format(value));

const view = {
  state: "connecting",
  job: null,
  work: null,
  done: 0,
  failed: 0,
  batches: 0,
  rate: 0,
  session: null,
  resumed: false,
  errors: [],
  leases: [],
  report: null, // the whole job's report, as GET /jobs/NAME gives it
  sample: null, // {id, text}: the last result, in brief
  started: Date.now(),
  ended: null,
};
window.planchet = view;

/** The settings of this page, read from its address; an Error when they do not make sense. */
function readConfig() {
  const query = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.slice(1));
  const job = query.get("job");
  const work = query.get("work");
  if (!job) throw new Error("no job: open /worker?job=NAME&work=/pages/your-module.js");
  if (!work) throw new Error("no work module: add &work=/pages/your-module.js to the address");
  const workUrl = new URL(work, location.origin);
  if (workUrl.origin !== location.origin) {
    // a module from elsewhere would run with this server's origin: refuse it
    throw new Error(`the work module must come from this server, not ${workUrl.origin}`);
  }
  const url = new URL("/", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return {
    url: url.href,
    job,
    work: workUrl.href,
    token: takeToken(fragment, job),
    session: sessionStorage.getItem(sessionKey(job)),
    prefetch: integer(query, "prefetch"),
    batchSize: integer(query, "batch_size"),
    maxBatchBytes: integer(query, "max_batch_bytes"),
  };
}

function integer(query, name) {
  const raw = query.get(name);
  if (raw === null || raw === "") return undefined;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a positive integer`);
  return value;
}

function sessionKey(job) {
  return `planchet:session:${job}`;
}

/**
 * The token from the address's fragment, which then leaves the address (and so the
 * browser's history and any screenshot); this tab's sessionStorage keeps it for a reload.
 */
function takeToken(fragment, job) {
  const key = `planchet:token:${job}`;
  if (!fragment.has("token")) return sessionStorage.getItem(key);
  const token = fragment.get("token");
  sessionStorage.setItem(key, token);
  history.replaceState(null, "", location.pathname + location.search);
  return token;
}

// --- what the runner says ------------------------------------------------------------

const handlers = {
  state({ state }) {
    view.state = state;
    if (FINAL.has(state)) {
      view.ended ??= Date.now();
      readReport(); // the last word on the whole job
    }
    const note = NOTES[state];
    if (note) $("note").textContent = note;
  },
  progress({ done, failed, batches, rate }) {
    Object.assign(view, { done, failed, batches, rate });
  },
  session({ session, resumed }) {
    view.session = session;
    view.resumed = resumed;
    if (session) sessionStorage.setItem(sessionKey(view.job), session);
    else sessionStorage.removeItem(sessionKey(view.job));
  },
  batch({ lease }) {
    view.leases.push(lease);
    if (view.leases.length > MAX_LEASES) view.leases.shift();
  },
  error({ message }) {
    addError(message);
  },
  sample({ id, text }) {
    view.sample = { id, text };
  },
  note({ message }) {
    $("note").textContent = message;
  },
};

/** The newest error first; the same message again (an item retried) counts up instead. */
function addError(message) {
  const text = String(message);
  const last = view.errors[0];
  if (last?.message === text) {
    last.count += 1;
    last.time = new Date();
    return;
  }
  view.errors.unshift({ time: new Date(), message: text, count: 1 });
  view.errors.length = Math.min(view.errors.length, MAX_ERRORS);
}

// --- drawing -------------------------------------------------------------------------

function render() {
  document.body.dataset.state = view.state;
  $("state").textContent = view.state;
  $("done").textContent = number.format(view.done);
  $("failed").textContent = number.format(view.failed);
  $("failed").parentElement.classList.toggle("bad", view.failed > 0);
  $("batches").textContent = number.format(view.batches);
  $("rate").textContent = rate(view.rate);
  $("session").textContent = sessionText();
  if (view.sample) $("sample").textContent = `item ${view.sample.id} → ${view.sample.text}`;
  $("elapsed").textContent = duration(((view.ended ?? Date.now()) - view.started) / 1000);
  renderJob();
  renderErrors();
  $("stop").disabled = FINAL.has(view.state);
  document.title = `${view.state === "working" ? "▶ " : ""}${number.format(view.done)} done · ${view.job ?? "?"} · Planchet`;
}

function sessionText() {
  if (!view.session) return view.state === "connecting" ? "not yet connected" : "none";
  return `${view.session.slice(0, 8)}… ${view.resumed ? "(resumed: its leases came back)" : "(new)"}`;
}

/** The whole job's progress, all workers together, from its report. */
function renderJob() {
  const report = view.report;
  if (report === null) return;
  const settled = report.written + report.failed;
  // the input's size in items: known once it is read out, else estimated from its bytes
  const total = report.exhausted ? report.read
    : report.bytes_read > 0 ? Math.round((report.read * report.bytes_total) / report.bytes_read) : null;
  const share = total ? Math.min(1, settled / total) : report.state === "done" ? 1 : 0;
  $("bar").style.width = `${(share * 100).toFixed(1)}%`;
  const parts = [`The whole job: ${number.format(settled)} of ${total === null ? "?" :
    (report.exhausted ? "" : "about ") + number.format(total)} items (${Math.floor(share * 100)}%)`];
  if (report.state === "done") parts.push("done");
  else if (report.state !== "running") parts.push(report.state);
  else if (report.rate > 0) parts.push(`${rate(report.rate)} items/s from every worker`);
  if (report.state === "running" && report.eta_seconds) parts.push(`about ${duration(report.eta_seconds)} left`);
  $("jobline").textContent = parts.join(" · ");
}

async function readReport() {
  if (view.job === null) return;
  try {
    const reply = await fetch(`/jobs/${encodeURIComponent(view.job)}`, { cache: "no-store" });
    if (reply.ok) view.report = await reply.json();
    else if (reply.status === 404) $("jobline").textContent = `The server has no job named ${view.job}.`;
  } catch {
    // the server is away for a moment: the runner's state says so; try again later
  }
  soon();
}

function renderErrors() {
  const list = $("errors");
  const items = view.errors.map(({ time, message, count }) => {
    const li = document.createElement("li");
    const stamp = document.createElement("time");
    stamp.textContent = time.toLocaleTimeString();
    li.append(stamp, message);
    if (count > 1) {
      const times = document.createElement("span");
      times.className = "count";
      times.textContent = `×${count}`;
      li.append(times);
    }
    return li;
  });
  if (items.length === 0) {
    const none = document.createElement("li");
    none.className = "none";
    none.textContent = "none so far";
    items.push(none);
  }
  list.replaceChildren(...items);
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

let pending = null;

/** Draw within 100 ms: a fast worker reports hundreds of batches a second. */
function soon() {
  pending ??= setTimeout(() => {
    pending = null;
    render();
  }, 100);
}

// --- start ---------------------------------------------------------------------------

function start() {
  let config;
  try {
    config = readConfig();
  } catch (err) {
    view.state = "error";
    addError(err.message);
    $("note").textContent = "This page's address is not right; the error above says why.";
    render();
    return;
  }
  view.job = config.job;
  view.work = new URL(config.work).pathname;
  $("job").textContent = config.job;
  $("work").textContent = view.work;
  $("server").textContent = new URL(config.url).host;

  const runner = new Worker("/web/runner.js", { type: "module", name: `planchet ${config.job}` });
  runner.addEventListener("message", ({ data }) => {
    handlers[data.type]?.(data);
    if (data.type === "state") render(); // at once: a state is rare and worth showing
    else soon();
  });
  runner.addEventListener("error", (event) => {
    view.state = "error";
    addError(event.message || "the worker script failed to load (see the browser console)");
    render();
  });
  runner.postMessage({ type: "start", ...config });

  $("stop").addEventListener("click", () => {
    $("stop").disabled = true;
    $("note").textContent = "Stopping: handing the items in hand back…";
    runner.postMessage({ type: "stop" });
  });
  setInterval(render, 1000); // the clock; everything else redraws when the runner speaks
  setInterval(() => {
    if (!FINAL.has(view.state)) readReport();
  }, REPORT_EVERY_MS);
  readReport();
  render();
}

start();
