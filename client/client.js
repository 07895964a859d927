// PlanchetClient: one connection to a Planchet server that survives blips (jobs,
// batches, results), over the global WebSocket (browsers, Node with
// --experimental-websocket or Node 22+) or the `ws` package when there is none.
//
// The wire logic lives in session.js; this module only moves frames between it and a
// socket, reconnects with backoff, and wakes whoever waits.

import { ClientSession, DONE, PlanchetError, droppedAck, splitResult } from "./session.js";

export const DEFAULT_URL = "ws://127.0.0.1:5005/";
/** Node's built-in WebSocket (undici) refuses messages over 4 MiB: keep batches under. */
export const DEFAULT_MAX_BATCH_BYTES = 4 * 1024 * 1024 - 64 * 1024;
/** Close codes after which reconnecting cannot help (fix the client, or the session
 * lives on another connection: 4001). */
export const FINAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008, 1009, 1010, 4001]);
const HELLO_TIMEOUT_MS = 30000;
const CLOSE_WAIT_MS = 2000;

/**
 * Accept `http://host:port` as well as `ws://` URLs, and a bare `host:port`.
 * @param {string} url
 */
export function websocketUrl(url) {
  const text = url.trim();
  if (text.startsWith("http://")) return "ws://" + text.slice(7);
  if (text.startsWith("https://")) return "wss://" + text.slice(8);
  return text.includes("://") ? text : "ws://" + text;
}

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const now = () => (typeof performance !== "undefined" ? performance.now() : Date.now());

/** @type {Promise<{Socket: any, isWs: boolean}> | null} */
let defaultSocket = null;

/**
 * The WebSocket class to use: `given`, else the global one, else the `ws` package.
 * @param {any} given
 * @returns {Promise<{Socket: any, isWs: boolean}>}
 */
function socketClass(given) {
  if (given) return Promise.resolve({ Socket: given, isWs: typeof given.prototype?.on === "function" });
  if (typeof globalThis.WebSocket === "function") return Promise.resolve({ Socket: globalThis.WebSocket, isWs: false });
  defaultSocket ??= import("ws").then(
    (mod) => ({ Socket: mod.WebSocket ?? mod.default, isWs: true }),
    () => {
      defaultSocket = null;
      throw new PlanchetError("no WebSocket: run Node 22+, node --experimental-websocket, or npm install ws", { code: "connection_lost", final: true });
    });
  return defaultSocket;
}

/**
 * Why a connection attempt failed, as an error; `final` when retrying cannot help.
 * @param {{code?: number, reason?: string}} close @param {string} detail
 */
function attemptError(close, detail) {
  const status = /Unexpected server response: (\d+)/.exec(detail);
  if (status !== null) {
    const code = Number(status[1]);
    const final = code !== 429 && code < 500;
    return new PlanchetError(`the server refused the connection: HTTP ${code}`, { code: "connection_lost", final });
  }
  const final = close.code !== undefined && FINAL_CLOSE_CODES.has(close.code);
  const why = close.code ? `closed ${close.code} ${close.reason ?? ""}`.trim() : detail || "connection failed";
  return new PlanchetError(why, { code: "connection_lost", final });
}

/**
 * The error an ended connection leaves, when it is final.
 * @param {number} code @param {string} reason
 */
function closeError(code, reason) {
  const what = code === 4001 ? "session resumed on another connection" : "connection closed by the server";
  return new PlanchetError(`${what} (${code}${reason ? ": " + reason : ""})`, { code: code === 4001 ? "session_taken" : "connection_lost", final: true });
}

/** A leased batch; `ack` sends its results (all at once or in parts). */
export class WorkBatch {
  /**
   * @param {PlanchetClient} client
   * @param {import("./session.js").BatchFrame} frame
   */
  constructor(client, frame) {
    this.client = client;
    this.job = frame.job;
    this.lease = frame.lease;
    /** @type {[number, any][]} [id, item] pairs */
    this.items = frame.items;
    this.leaseTimeout = frame.lease_timeout;
    /** Bytes of the batch frame as received (0 when unknown). */
    this.bytes = frame.bytes;
  }

  get ids() {
    return this.items.map(([id]) => id);
  }

  get values() {
    return this.items.map(([, item]) => item);
  }

  /**
   * @param {[number, any][]} results @param {import("./index.js").ItemErrorLike[]} [errors]
   */
  ack(results, errors = []) {
    return this.client.sendResults(this.job, this.lease, results, errors);
  }

  /** Hand the batch (or some ids) back, no attempt charged. @param {number[] | null} [ids] */
  release(ids = null) {
    return this.client.release(this.job, this.lease, { ids });
  }

  /** Push the deadline out (null: the job's lease_timeout). @param {number | null} [seconds] */
  extend(seconds = null) {
    return this.client.extend(this.job, this.lease, { seconds });
  }
}

/** A connection to a Planchet server that survives blips: requests, batches, results. */
export class PlanchetClient extends EventTarget {
  /**
   * @param {string} [url]
   * @param {import("./index.js").ClientOptions} [options]
   */
  constructor(url = DEFAULT_URL, { token = null, retries = 8, resumable = false, session = null, WebSocket = null, client } = {}) {
    super();
    this.url = websocketUrl(url);
    this.token = token;
    /** Failed connection attempts in a row before giving up. */
    this.retries = retries;
    this._session = new ClientSession({ token, resumable, session, client });
    this._WebSocket = WebSocket;
    /** @type {any} */
    this._ws = null;
    /** @type {Promise<void> | null} */
    this._opening = null;
    /** @type {PlanchetError | null} why no connection can be had */
    this._dead = null;
    this._closing = false;
    /** @type {Array<() => void>} */
    this._wakers = [];
  }

  /** This session's id (resumable sessions), to resume it from another client. */
  get session() {
    return this._session.sessionId;
  }

  get connected() {
    return this._ws !== null;
  }

  /** The sans-I/O state, for the curious. */
  get state() {
    return this._session;
  }

  /** Open the connection (with backoff). */
  async connect() {
    if (this._ws !== null) return;
    this._closing = false;
    this._dead = null;
    this._opening ??= this._open().finally(() => { this._opening = null; });
    await this._opening;
  }

  /**
   * Close with `code` (1000: the server requeues what we held, uncharged, and forgets
   * the session). Browsers allow only 1000 and 3000-4999.
   * @param {number} [code] @param {string} [reason]
   */
  async close(code = 1000, reason = "") {
    this._closing = true;
    const ws = this._ws;
    this._ws = null;
    if (ws !== null && ws.readyState <= 1) {
      const closed = new Promise((resolve) => {
        const timer = setTimeout(resolve, CLOSE_WAIT_MS);
        ws.addEventListener("close", () => { clearTimeout(timer); resolve(undefined); });
      });
      try {
        ws.close(code, reason);
      } catch {
        ws.close(1000, reason);
      }
      await closed;
    }
    if (code === 1000) this._session.sessionId = null;
    this._session.disconnected();
    this._session.fail(new PlanchetError("client closed", { code: "connection_lost" }));
    this._notify();
  }

  // --- the connection ---------------------------------------------------------------

  async _open() {
    /** @type {PlanchetError | null} */
    let last = null;
    for (;;) {
      const delay = this._session.nextDelay(this.retries);
      if (delay === null) throw new PlanchetError(`cannot reach ${this.url}: ${last?.message}`, { code: "connection_lost" });
      if (delay > 0) await sleep(delay * 1000);
      if (this._closing) throw new PlanchetError("client closed", { code: "connection_lost" });
      try {
        await this._handshake();
        return;
      } catch (err) {
        // network failures come as close events: anything thrown (a bad URL...) is final
        const error = err instanceof PlanchetError ? err : new PlanchetError(String(err), { code: "connection_lost", final: true });
        if (error.final) throw error;
        last = error;
      }
    }
  }

  /** One attempt: open a socket, say hello, file the welcome. */
  async _handshake() {
    const { Socket, isWs } = await socketClass(this._WebSocket);
    const ws = isWs ? new Socket(this.url, { maxPayload: 0, perMessageDeflate: false }) : new Socket(this.url);
    ws.binaryType = "arraybuffer";
    const info = await new Promise((resolve, reject) => {
      let detail = "";
      const timer = setTimeout(() => {
        reject(new PlanchetError("no welcome within 30 s", { code: "connection_lost" }));
        ws.close();
      }, HELLO_TIMEOUT_MS);
      ws.onopen = () => ws.send(JSON.stringify(this._session.hello()));
      ws.onerror = (/** @type {any} */ ev) => { detail = ev?.message ?? ev?.error?.message ?? ""; };
      ws.onclose = (/** @type {any} */ ev) => {
        clearTimeout(timer);
        reject(attemptError(ev, detail));
      };
      ws.onmessage = (/** @type {any} */ ev) => {
        clearTimeout(timer);
        try {
          if (this._closing) throw new PlanchetError("client closed", { code: "connection_lost", final: true });
          resolve(this._session.welcome(ev.data));
          this._attach(ws);
        } catch (err) {
          reject(err);
          ws.close();
        }
      };
    });
    this._flush(); // the credits and requests the session queued on welcome
    this._notify();
    this.dispatchEvent(new CustomEvent("open", { detail: info }));
  }

  /** @param {any} ws */
  _attach(ws) {
    this._ws = ws;
    ws.onmessage = (/** @type {any} */ ev) => this._receive(ev.data);
    ws.onclose = (/** @type {any} */ ev) => this._lost(ws, ev.code, ev.reason ?? "");
    ws.onerror = () => {}; // the close that follows says it all
  }

  /** @param {any} data */
  _receive(data) {
    const msg = this._session.receive(data, now());
    this._notify();
    if (msg === null) {
      this._ws?.close(1000, "protocol error");
      return;
    }
    if (msg.type === "event" || msg.type === "goodbye" || msg.type === "status") this.dispatchEvent(new CustomEvent(msg.type, { detail: msg }));
  }

  /** @param {any} ws @param {number} code @param {string} reason */
  _lost(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    this._session.disconnected();
    this.dispatchEvent(new CustomEvent("close", { detail: { code, reason } }));
    if (FINAL_CLOSE_CODES.has(code)) {
      this._die(closeError(code, reason));
      return;
    }
    this._opening ??= this._open().catch((err) => this._die(err)).finally(() => { this._opening = null; });
  }

  /** @param {PlanchetError} error */
  _die(error) {
    this._dead = error;
    this._session.fail(error);
    this._notify();
    this.dispatchEvent(new CustomEvent("error", { detail: { error, fatal: true } }));
  }

  _notify() {
    const wakers = this._wakers;
    this._wakers = [];
    for (const wake of wakers) wake();
  }

  /** @param {() => boolean} ready */
  async _until(ready) {
    while (!ready()) await new Promise((resolve) => this._wakers.push(() => resolve(undefined)));
  }

  /** Send what the session queued. On a dead connection the session sends everything
   * still pending on the next one. */
  _flush() {
    const messages = this._session.takeOutbox();
    const ws = this._ws;
    if (ws === null || ws.readyState !== 1) return;
    for (const message of messages) ws.send(JSON.stringify(message));
  }

  async _ensureOpen() {
    if (this._closing) throw new PlanchetError("client closed", { code: "connection_lost" });
    if (this._dead !== null) throw this._dead;
    if (this._ws === null && this._opening === null) await this.connect();
  }

  /** @param {number} key */
  async _wait(key) {
    this._flush();
    await this._until(() => this._session.hasAnswer(key));
    return /** @type {any} */ (this._session.answer(key));
  }

  /** @param {Record<string, any>} message */
  _stamp(message) {
    const msg = { ...message };
    if (msg.token === undefined) msg.token = this.token;
    JSON.stringify(msg); // a value JSON cannot carry throws here, before it is queued
    return msg;
  }

  // --- requests ---------------------------------------------------------------------

  /**
   * Send any request (`{type, ...}`; its `id` is set here) and return its reply's data.
   * @param {Record<string, any>} message
   */
  async request(message) {
    await this._ensureOpen();
    const msg = this._stamp(message);
    msg.id = this._session.nextId();
    const reply = await this._wait(this._session.request(msg));
    return reply.data;
  }

  /**
   * Create a job, or resume it when the spec is the same.
   * @param {string} job @param {Record<string, any>} metadata
   * @param {import("./index.js").StartJobOptions} [options]
   */
  startJob(job, metadata, { reader = "JsonlReader", writer = "JsonlWriter", mode = "read-write", batchSize, leaseTimeout, batchSeconds, maxAttempts, cleanStart = false, token } = {}) {
    /** @type {Record<string, any>} */
    const msg = { type: "start_job", job, metadata, reader, writer, mode, clean_start: cleanStart };
    if (mode === "write") msg.reader = null;
    if (mode === "read") msg.writer = null;
    const optional = { batch_size: batchSize, lease_timeout: leaseTimeout, batch_seconds: batchSeconds, max_attempts: maxAttempts, token };
    for (const [key, value] of Object.entries(optional)) if (value !== undefined) msg[key] = value;
    return this.request(msg);
  }

  /** @param {string} job @param {{token?: string | null}} [options] */
  report(job, { token } = {}) { return this.request({ type: "report", job, token }); }
  /** @param {string} job @param {{token?: string | null}} [options] */
  pause(job, { token } = {}) { return this.request({ type: "pause", job, token }); }
  /** @param {string} job @param {{token?: string | null}} [options] */
  resume(job, { token } = {}) { return this.request({ type: "resume", job, token }); }
  /** @param {string} job @param {{token?: string | null}} [options] */
  delete(job, { token } = {}) { return this.request({ type: "delete", job, token }); }
  /** @param {string} job @param {{token?: string | null}} [options] */
  clean(job, { token } = {}) { return this.request({ type: "clean", job, token }); }
  /** Put the items of the job's error file back in the queue (the file is rotated).
   * @param {string} job @param {{token?: string | null}} [options] */
  retry(job, { token } = {}) { return this.request({ type: "retry", job, token }); }
  /** @param {{token?: string | null}} [options] */
  jobs({ token } = {}) { return this.request({ type: "jobs", token }); }

  /**
   * A worker token for `jobs`: it may only take batches and send results.
   * @param {string[]} jobs @param {{label?: string | null, token?: string | null}} [options]
   */
  grantToken(jobs, { label = null, token } = {}) { return this.request({ type: "grant", jobs, label, token }); }
  /** @param {string | null} [job] @param {{token?: string | null}} [options] */
  workerTokens(job = null, { token } = {}) { return this.request({ type: "tokens", job, token }); }
  /** @param {string} key @param {{token?: string | null}} [options] */
  revokeToken(key, { token } = {}) { return this.request({ type: "revoke", key, token }); }

  /**
   * Hand a lease's pending items (or `ids` of them) back, no attempt charged.
   * @param {string} job @param {string} lease @param {{ids?: number[] | null, token?: string | null}} [options]
   */
  async release(job, lease, { ids = null, token } = {}) {
    await this._ensureOpen();
    const msg = this._stamp({ type: "release", job, lease, ids, token });
    msg.id = this._session.nextId();
    return (await this._wait(this._session.release(msg))).data;
  }

  /**
   * Push a lease's deadline to `seconds` from now (null: the job's lease_timeout).
   * @param {string} job @param {string} lease @param {{seconds?: number | null, token?: string | null}} [options]
   */
  extend(job, lease, { seconds = null, token } = {}) {
    return this.request({ type: "extend", job, lease, seconds, token });
  }

  /**
   * Status frames of `jobs` (null: every job), the first at once, then one every
   * `interval` seconds, until the loop breaks (the watch then stops) or the client
   * closes. Kept up across reconnects. A slow reader skips to the newest frame. One
   * watch per client: a new one replaces the one before (so does its `token`, which
   * decides whether a job's workers and errors are shown). Each frame is also
   * dispatched as a `status` event.
   * @param {{jobs?: string[] | null, interval?: number, token?: string | null}} [options]
   * @returns {AsyncGenerator<import("./index.js").StatusFrame, void, void>}
   */
  async *watch({ jobs = null, interval = 1, token } = {}) {
    if (!(interval >= 0.25 && interval <= 60)) throw new RangeError(`interval must be between 0.25 and 60 seconds, not ${interval}`);
    await this._ensureOpen();
    const msg = this._stamp({ type: "watch", jobs, interval, token });
    msg.id = this._session.nextId();
    let seen = this._session.statuses; // the first status may come before the reply is read
    try {
      await this._wait(this._session.watch(msg));
      for (;;) {
        await this._until(() => this._session.statuses !== seen || this._closing || this._dead !== null);
        if (this._session.statuses !== seen) {
          seen = this._session.statuses;
          yield /** @type {any} */ (this._session.status);
        } else if (this._dead !== null) throw this._dead;
        else return;
      }
    } finally {
      if (this._session.watching === msg) this._unwatch(msg);
    }
  }

  /** Stop the watch `msg` started; no one waits for the answer. @param {Record<string, any>} msg */
  _unwatch(msg) {
    this._session.watching = null;
    if (this._closing || this._dead !== null) return;
    const key = this._session.watch({ ...msg, id: this._session.nextId(), interval: 0 });
    this._session.abandon(key);
    this._flush();
  }

  // --- work -------------------------------------------------------------------------

  /**
   * Batches of `job` as the server pushes them, until the job is done.
   * @param {string} job @param {import("./index.js").BatchOptions} [options]
   * @returns {AsyncGenerator<WorkBatch, void, void>}
   */
  async *batches(job, { prefetch = 2, batchSize = null, maxBatchBytes = DEFAULT_MAX_BATCH_BYTES, token } = {}) {
    if (maxBatchBytes !== null && !(maxBatchBytes >= 1024 && maxBatchBytes <= 2 ** 31)) {
      throw new RangeError(`maxBatchBytes must be between 1024 and 2**31, not ${maxBatchBytes}`);
    }
    await this._ensureOpen();
    /** @type {Record<string, any>} */
    const credit = { type: "credit", job, batches: prefetch, token: token ?? this.token };
    if (batchSize !== null) credit.batch_size = batchSize;
    if (maxBatchBytes !== null) credit.max_batch_bytes = Math.floor(maxBatchBytes);
    this._session.credit(credit);
    try {
      this._flush();
      for (;;) {
        await this._until(() => this._session.hasBatch(job));
        const got = this._session.takeBatch(job); // a deleted job or refused credit throws
        if (got === DONE || got === null) return;
        yield new WorkBatch(this, got);
      }
    } finally {
      this._session.uncredit(job);
    }
  }

  /**
   * Change the window of a job being consumed (0 stops new batches).
   * @param {string} job @param {number} prefetch
   */
  setPrefetch(job, prefetch) {
    const credit = this._session.credits.get(job);
    if (credit === undefined) return;
    this._session.credit({ ...credit, batches: prefetch });
    this._flush();
  }

  /**
   * Send results (`[id, value]` pairs) and errors for a lease, in as many frames as the
   * server's max_message_bytes needs; the sum of their acks. Results the server could
   * not take (`unavailable`) count as dropped.
   * @param {string} job @param {string | null} lease @param {[number, any][]} results
   * @param {import("./index.js").ItemErrorLike[]} [errors] @param {{token?: string | null}} [options]
   */
  async sendResults(job, lease, results, errors = [], { token } = {}) {
    const itemErrors = errors.map((e) => ({ id: e.id, message: String(e.message), retry: e.retry !== false }));
    const message = { type: "result", job, lease, items: results, errors: itemErrors, token: token ?? this.token };
    const frames = splitResult(/** @type {any} */ (message), this._session.maxMessageBytes);
    await this._ensureOpen();
    const keys = frames.map((frame) => this._session.result(frame));
    const acks = await Promise.all(keys.map(async (key, i) => {
      try {
        return await this._wait(key);
      } catch (err) {
        if (err instanceof PlanchetError && err.code === "unavailable") return droppedAck(frames[i]);
        throw err;
      }
    }));
    const sum = { type: "ack", job, lease, written: 0, retried: 0, failed: 0, dropped: 0 };
    for (const ack of acks) for (const key of /** @type {const} */ (["written", "retried", "failed", "dropped"])) sum[key] += ack[key];
    return sum;
  }
}
