// PlanchetWorker: a whole worker in one call.
//
//   const worker = new PlanchetWorker(url, { job: "headlines", token, prefetch: 2 });
//   worker.addEventListener("progress", (e) => console.log(e.detail));
//   await worker.run(async (items) => items.map((item) => item.text.length));
//
// It takes batches one at a time (the next ones already on their way: `prefetch`), hands
// the handler their items, sends one result per item (an `ItemFailure` becomes an item
// error; a thrown error fails the whole batch, to be retried), keeps every lease it holds
// alive with `extend` while the work takes longer than half its lease_timeout, survives
// blips (the session resumes its leases), and on `stop()` hands its leases back.
//
// Its circuit breaker: after `maxFailingBatches` (default 3; 0: never) batches in a row
// acked with every item failed and none written, `run()` rejects with a PlanchetError of
// code `circuit_open` naming the last error (and fires `error`), so a broken handler does
// not burn the job's attempts. A batch of items all failed here before (retries) is left
// out of the count. The server's own breaker (`circuit_open` frame) ends it the same way.

import { DEFAULT_MAX_BATCH_BYTES, PlanchetClient } from "./client.js";
import { PlanchetError } from "./frames.js";

const RATE_WINDOW_MS = 30000;
const RELEASE_WAIT_MS = 5000;
const HEARTBEAT_MAX_MS = 1000;
const MAX_FAILED_IDS = 100000; // ids failed here remembered, to know a batch of retries
const now = () => (typeof performance !== "undefined" ? performance.now() : Date.now());

/** What a handler returns for an item it failed on (see `PlanchetWorker.fail`). */
export class ItemFailure {
  /** @param {string} message @param {boolean} [retry] */
  constructor(message, retry = true) {
    this.message = message;
    this.retry = retry;
  }
}

/** @param {unknown} err */
function describe(err) {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/** A worker for one job: `run(handler)` until the job is done, deleted, or `stop()`. */
export class PlanchetWorker extends EventTarget {
  /**
   * A per-item failure to return from the handler in that item's place.
   * @param {unknown} message @param {{retry?: boolean}} [options] retry false: to the error file now
   */
  static fail(message, { retry = true } = {}) {
    return new ItemFailure(String(message), retry);
  }

  /**
   * @param {string} url
   * @param {import("./index.js").WorkerOptions} options
   */
  constructor(url, { job, token = null, prefetch = 2, batchSize = null, maxBatchBytes = DEFAULT_MAX_BATCH_BYTES,
    resumable = true, session = null, retries = 60, WebSocket = null, maxFailingBatches = 3 }) {
    super();
    if (!job) throw new TypeError("PlanchetWorker needs a job");
    this.url = url;
    this.job = job;
    this.options = { token, prefetch, batchSize, maxBatchBytes, resumable, session, retries, WebSocket };
    /** @type {PlanchetClient | null} */
    this.client = null;
    /** @type {"idle" | "connecting" | "working" | "waiting" | "done" | "stopped"} */
    this.state = "idle";
    this.progress = { done: 0, failed: 0, retried: 0, dropped: 0, batches: 0, rate: 0 };
    this._stopping = false;
    /** @type {(value: symbol) => void} */
    this._signalStop = () => {};
    this._stopSignal = new Promise((resolve) => { this._signalStop = resolve; });
    /** @type {(error: any) => void} */
    this._signalDeath = () => {};
    /** A fatal end of the client (a final close code, no reconnect left): ends a handler's wait. */
    this._death = new Promise((resolve) => { this._signalDeath = resolve; }).then((error) => { throw error; });
    this._death.catch(() => {});  // awaited in a race only
    /** @type {Promise<void> | null} */
    this._stopped = null;
    /** @type {Set<Promise<void>>} acks still on their way */
    this._acks = new Set();
    /** @type {Map<string, number>} lease -> when it was last renewed (ms) */
    this._renewed = new Map();
    /** @type {Array<{t: number, n: number}>} */
    this._samples = [];
    this._started = 0;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._timer = null;
    this.maxFailingBatches = maxFailingBatches;
    /** The breaker: batches in a row failed on every item, the last error, the ids failed. */
    this._failing = { count: 0, last: "", ids: new Set() };
    /** @type {PlanchetError | null} set when the breaker opens: run() ends with it */
    this._circuit = null;
  }

  /** This worker's session id (keep it, e.g. in sessionStorage, to resume after a reload). */
  get session() {
    return this.client?.session ?? this.options.session;
  }

  /**
   * Work until the job is done or deleted (resolves `{reason, ...progress}`), or until
   * `stop()` (reason "stopped"). Rejects on a fatal error: refused, unauthorized, no
   * connection after `retries` attempts.
   * @param {import("./index.js").Handler} handler
   */
  async run(handler) {
    if (this.client !== null) throw new Error("run() was already called on this worker");
    const { token, prefetch, batchSize, maxBatchBytes, resumable, session, retries, WebSocket } = this.options;
    const client = new PlanchetClient(this.url, { token, retries, resumable, session, WebSocket });
    this.client = client;
    client.addEventListener("open", (e) => this._opened(/** @type {CustomEvent} */ (e).detail));
    client.addEventListener("close", () => { if (!this._stopping) this._setState("connecting"); });
    client.addEventListener("error", (e) => {
      const detail = /** @type {CustomEvent} */ (e).detail;
      if (detail.fatal) this._signalDeath(detail.error);
    });
    this._started = now();
    this._setState("connecting");
    this._beat();
    let reason = "done";
    try {
      await client.connect();
      for await (const batch of client.batches(this.job, { prefetch, batchSize, maxBatchBytes })) {
        if (this._stopping) break;
        if (this._circuit !== null) throw this._circuit;
        await this._work(batch, handler);
        if (!this._stopping) this._setState("waiting");
      }
    } catch (err) {
      const error = /** @type {any} */ (err);
      if (error?.code === "job_deleted") reason = "deleted";
      else if (!this._stopping) return this._fatal(error);
    } finally {
      if (this._timer !== null) clearTimeout(this._timer);
    }
    await Promise.allSettled([...this._acks]);
    if (this._stopping) {
      await this._stopped;
      return { reason: "stopped", ...this.progress };
    }
    await client.close(1000, "job " + reason);
    this._setState("done");
    return { reason, ...this.progress };
  }

  /** Stop: no new batches, hand back every lease held (no attempt charged), close 1000. */
  stop() {
    if (this._stopped !== null) return this._stopped;
    this._stopping = true;
    this._signalStop(Symbol("stopped"));
    this._stopped = this._release().then(() => this._setState("stopped"));
    return this._stopped;
  }

  async _release() {
    const client = this.client;
    if (client === null) return;
    if (client.connected) {
      client.setPrefetch(this.job, 0);
      const leases = client.state.heldLeases(this.job).map((held) => held.lease);
      const released = Promise.allSettled(leases.map((lease) => client.release(this.job, lease)));
      /** @type {ReturnType<typeof setTimeout> | undefined} */
      let timer;
      await Promise.race([released, new Promise((resolve) => { timer = setTimeout(resolve, RELEASE_WAIT_MS); })]);
      clearTimeout(timer);
    }
    await client.close(1000, "worker stopped");
  }

  /** @param {any} error */
  async _fatal(error) {
    this._emit("error", { error, fatal: true });
    await this.client?.close(1000, "worker failed");
    this._setState("stopped");
    throw error;
  }

  /** @param {{session: string | null, resumed: boolean}} detail */
  _opened(detail) {
    if (this._stopping) return;
    this._emit("session", detail);
    if (this.state === "connecting") this._setState("waiting");
  }

  /**
   * @param {import("./client.js").WorkBatch} batch
   * @param {import("./index.js").Handler} handler
   */
  async _work(batch, handler) {
    this._setState("working");
    this._emit("batch", { job: batch.job, lease: batch.lease, size: batch.items.length, bytes: batch.bytes, leaseTimeout: batch.leaseTimeout });
    const ids = batch.ids;
    const values = batch.values;
    /** @type {[number, any][]} */
    let results = [];
    /** @type {{id: number, message: string, retry: boolean}[]} */
    let errors = [];
    const work = Promise.resolve().then(() => handler(values, { ids, lease: batch.lease, job: batch.job }));
    // the client's death ends the wait (rejecting run), whatever the handler is doing
    const finished = await Promise.race([work.then(() => true, () => true), this._stopSignal, this._death]);
    if (this._stopping || finished !== true) return;
    try {
      const out = await work;
      if (!Array.isArray(out) || out.length !== values.length) {
        throw new TypeError(`the handler returned ${Array.isArray(out) ? out.length + " results" : typeof out} for ${values.length} items`);
      }
      out.forEach((value, i) => {
        if (value instanceof ItemFailure) errors.push({ id: ids[i], message: value.message, retry: value.retry });
        else results.push([ids[i], value === undefined ? null : value]);
      });
    } catch (err) {
      if (this._stopping) return;
      results = [];
      errors = ids.map((id) => ({ id, message: describe(err), retry: true }));
      this._emit("error", { error: err, fatal: false, job: batch.job, lease: batch.lease });
    }
    if (this._circuit !== null) return; // its items go back free when run() closes
    const fresh = ids.some((id) => !this._failing.ids.has(id));
    if (errors.length > 0) this._failing.last = errors[errors.length - 1].message;
    if (this._failing.ids.size > MAX_FAILED_IDS) this._failing.ids.clear();
    for (const { id } of errors) this._failing.ids.add(id);
    this._settle(batch.ack(results, errors), fresh);
  }

  /** @param {Promise<import("./index.js").Ack>} sent @param {boolean} fresh */
  _settle(sent, fresh = true) {
    const done = sent.then((ack) => { this._count(ack); this._breaker(ack, fresh); }, (error) => {
      if (!this._stopping) this._emit("error", { error, fatal: false });
    });
    this._acks.add(done);
    done.finally(() => this._acks.delete(done));
  }

  /** @param {import("./index.js").Ack} ack */
  _count(ack) {
    const p = this.progress;
    p.done += ack.written;
    p.failed += ack.failed;
    p.retried += ack.retried;
    p.dropped += ack.dropped;
    p.batches += 1;
    const t = now();
    this._samples.push({ t, n: ack.written + ack.failed + ack.retried });
    while (this._samples.length > 0 && this._samples[0].t < t - RATE_WINDOW_MS) this._samples.shift();
    const settled = this._samples.reduce((sum, s) => sum + s.n, 0);
    const span = Math.min(RATE_WINDOW_MS, t - this._started) / 1000;
    p.rate = span > 0 ? Math.round((settled / span) * 100) / 100 : 0;
    this._emit("progress", { ...p });
  }

  /**
   * Count the batches in a row acked with every item failed (a batch of retries only,
   * `fresh` false, is left out); open the circuit at `maxFailingBatches`.
   * @param {import("./index.js").Ack} ack @param {boolean} fresh
   */
  _breaker(ack, fresh) {
    const f = this._failing;
    if (ack.written > 0) f.count = 0;
    else if (ack.failed + ack.retried > 0 && fresh) f.count += 1;
    if (this.maxFailingBatches > 0 && f.count >= this.maxFailingBatches && this._circuit === null) {
      this._circuit = new PlanchetError(
        `the last ${f.count} batches of job ${this.job} failed on every item (the last error: ${f.last.slice(0, 500)}); ` +
        `stopping this worker: fix it and start it again (maxFailingBatches=${this.maxFailingBatches})`,
        { code: "circuit_open" });
      this.client?.state.openCircuit(this.job, this._circuit); // ends the wait for the next batch
      this.client?._notify();
    }
  }

  /** The heartbeat: extend every lease held for longer than half its lease_timeout since
   * it came or was last extended (the batch at work, and the ones waiting their turn). */
  _beat() {
    const client = this.client;
    if (client === null || this._stopping) return;
    const t = now();
    let next = HEARTBEAT_MAX_MS;
    const held = client.state.heldLeases(this.job);
    const live = new Set(held.map((h) => h.lease));
    for (const lease of this._renewed.keys()) if (!live.has(lease)) this._renewed.delete(lease);
    for (const { lease, received, leaseTimeout } of held) {
      const half = leaseTimeout * 500;
      next = Math.min(next, half / 2);
      if (t - (this._renewed.get(lease) ?? received) < half || !client.connected) continue;
      this._renewed.set(lease, t);
      client.extend(this.job, lease).catch(() => {}); // a lost lease shows in its ack
    }
    this._timer = setTimeout(() => this._beat(), Math.max(20, next));
  }

  /** @param {string} state */
  _setState(state) {
    if (this.state === state) return;
    this.state = /** @type {any} */ (state);
    this._emit("state", { state });
  }

  /** @param {string} type @param {any} detail */
  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
