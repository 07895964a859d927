// The worker page's engine: a module Web Worker that runs the Planchet client and the
// work, off the page's thread. The page starts it with
//
//   postMessage({type: "start", url, job, token, work, session, prefetch, batchSize, maxBatchBytes})
//
// and may later send {type: "stop"}. It answers with messages the page draws:
//   {type: "state", state}            connecting | working | waiting | done | stopped | error
//   {type: "progress", done, failed, batches, rate}
//   {type: "session", session, resumed}   to keep in sessionStorage, for a reload to resume
//   {type: "batch", lease, size, bytes}   each batch as it starts
//   {type: "error", message}          an item that failed, a lost connection, a fatal error
//   {type: "sample", id, text}        the last result of a batch, in brief
//   {type: "note", message}           how the run ended, when there is something to say
//
// The work module exports `work(item)` (one item, may be async) or `workBatch(items, meta)`
// (one result per item, in order; meta is {ids, lease, job}). A `work(item)` that throws
// fails that item alone (it is retried while it has attempts left); a `workBatch` that
// throws fails its whole batch.

const SAMPLE_CHARS = 240; // of the last result, shown on the page
const MAX_TAKEOVERS = 3; // sessions taken over by another tab before this one gives up
const IDLE_AFTER_MS = 500; // "waiting" only after this long without a batch: no flicker

let worker = null; // the PlanchetWorker at work
const carried = { done: 0, failed: 0, batches: 0 }; // by the workers before it, if any
let stopping = false;
let shown = null; // the state the page shows
let idle = null; // the timer that will show "waiting"

const say = (message) => postMessage(message);

function setState(state) {
  clearTimeout(idle);
  idle = null;
  if (state !== shown) say({ type: "state", state });
  shown = state;
}

/** Between two batches a worker waits for a moment: say so only if it lasts. */
function setWaiting() {
  if (shown !== "working") return setState("waiting");
  idle ??= setTimeout(() => setState("waiting"), IDLE_AFTER_MS);
}

self.addEventListener("message", ({ data }) => {
  if (data.type === "start" && worker === null) start(data).catch(fatal);
  if (data.type === "stop") stop().catch(fatal);
});

function fatal(err) {
  say({ type: "error", message: describe(err) });
  setState("error");
}

function describe(err) {
  if (err instanceof Error || (err && typeof err === "object" && "message" in err)) {
    const code = err.code && err.code !== "error" ? `${err.code}: ` : "";
    return `${code}${err.message}`;
  }
  return String(err);
}

async function load(what, url) {
  try {
    return await import(url);
  } catch (err) {
    throw new Error(`could not load ${what} ${new URL(url).pathname}: ${describe(err)}`);
  }
}

async function start(config) {
  setState("connecting");
  const client = await load("the Planchet client", new URL("/client.js", self.location.origin).href);
  const handler = makeHandler(await load("the work module", config.work), client);
  let session = config.session ?? null;
  for (let taken = 0; !stopping; taken += 1) { // stopped while loading: stop() said so
    worker = newWorker(client.PlanchetWorker, config, session);
    try {
      const { reason } = await worker.run(handler);
      setState(stopping ? "stopped" : "done");
      if (reason === "deleted") say({ type: "note", message: `Job ${config.job} was deleted.` });
      return;
    } catch (err) {
      if (stopping) return setState("stopped");
      if (err?.code !== "session_taken" || taken >= MAX_TAKEOVERS) throw err;
      // another tab resumed this tab's session (a duplicated tab copies sessionStorage):
      // the session and its leases are that tab's now; this one starts a new session
      say({ type: "error", message: "another tab took this session over; starting a new one" });
      for (const key of Object.keys(carried)) carried[key] += worker.progress[key];
      session = null;
    }
  }
}

function newWorker(PlanchetWorker, config, session) {
  const options = { job: config.job, token: config.token ?? null, session };
  if (config.prefetch) options.prefetch = config.prefetch;
  if (config.batchSize) options.batchSize = config.batchSize;
  if (config.maxBatchBytes) options.maxBatchBytes = config.maxBatchBytes;
  const created = new PlanchetWorker(config.url, options);
  listen(created);
  return created;
}

/** The client's events, turned into the page's messages. */
function listen(target) {
  // events of a worker replaced after its session was taken are its own business
  const on = (type, listener) =>
    target.addEventListener(type, ({ detail }) => target === worker && listener(detail));
  on("state", ({ state }) => {
    if (state === "stopped" && !stopping) return; // a fatal error: start() says so
    if (state === "waiting") setWaiting();
    else setState(state === "idle" ? "connecting" : state);
  });
  on("progress", ({ done, failed, batches, rate }) => {
    say({ type: "progress", done: carried.done + done, failed: carried.failed + failed,
      batches: carried.batches + batches, rate });
  });
  on("session", ({ session, resumed }) => say({ type: "session", session, resumed }));
  on("batch", ({ lease, size, bytes }) => say({ type: "batch", lease, size, bytes }));
  on("error", ({ error, fatal }) => {
    if (!fatal) say({ type: "error", message: describe(error) });
  });
}

/** The batch handler `run` calls: one result per item, failures as PlanchetWorker.fail. */
function makeHandler(module, { PlanchetWorker, ItemFailure }) {
  const work = pick(module);
  return async (items, meta) => {
    const results = await work(items, meta, PlanchetWorker);
    sample(results, meta.ids, ItemFailure);
    return results;
  };
}

function pick(module) {
  if (typeof module.workBatch === "function") return (items, meta) => module.workBatch(items, meta);
  if (typeof module.work !== "function") {
    throw new Error("the work module exports neither work(item) nor workBatch(items, meta)");
  }
  return async (items, meta, PlanchetWorker) => {
    const results = [];
    for (const [index, item] of items.entries()) {
      try {
        results.push(await module.work(item));
      } catch (err) {
        say({ type: "error", message: `item ${meta.ids[index]}: ${describe(err)}` });
        results.push(PlanchetWorker.fail(describe(err)));
      }
    }
    return results;
  };
}

/** A result as `key: value, ...` (an object) or as JSON (anything else). */
function brief(value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return JSON.stringify(value) ?? "null";
  return Object.entries(value).map(([key, field]) => `${key}: ${JSON.stringify(field)}`).join(", ");
}

/** The last result of a batch, shortened, for the page to show what the work makes. */
function sample(results, ids, ItemFailure) {
  const last = Array.isArray(results) ? results.length - 1 : -1;
  if (last < 0 || results[last] instanceof ItemFailure) return;
  let text;
  try {
    text = brief(results[last]);
  } catch {
    return; // not JSON: the client will say so when it sends it
  }
  say({ type: "sample", id: ids[last], text: text.length > SAMPLE_CHARS ? `${text.slice(0, SAMPLE_CHARS)}…` : text });
}

async function stop() {
  stopping = true;
  if (worker !== null) await worker.stop(); // hands back the leases in hand, then closes 1000
  say({ type: "session", session: null, resumed: false });
  setState("stopped");
}
