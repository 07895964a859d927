// What a client knows about its connection, with no I/O: the shape of planchet/session.py.
//
// `ClientSession` builds the hello and checks the welcome, queues outgoing messages,
// files every incoming frame (replies by request id, acks in the order the results of a
// job were sent, batches and events by job, goodbye), keeps the leases in hand per job
// and counts failed connection attempts for the backoff. client.js only moves frames
// between it and a WebSocket; tests drive it with plain objects.
//
// A reconnect of a resumable session names its session id and the leases it still holds
// in the hello. When the server resumes it, everything pending is sent again and the held
// leases stay ours. When it does not (no session, or too late), the session forgets what
// the server forgot: results for the old leases are answered here as dropped, never sent,
// and batches not yet handed out are thrown away. Requests, results for no lease and the
// credit of every job being consumed are sent again, in their order.

import {
  CLIENT_NAME, DEFAULT_MAX_MESSAGE_BYTES, DONE, MAX_STALE, PROTOCOL_VERSION, PlanchetError, backoff,
  decodeFrame, droppedAck, errorFromFrame, frameBytes,
} from "./frames.js";

export * from "./frames.js";

/** Where this client runs, for the server's `watch` (hello.client: `planchet-js/<v> node`). */
const RUNTIME = typeof process !== "undefined" && process.versions?.node ? "node" : "browser";

/**
 * @typedef {{ids: Set<number>, received: number, leaseTimeout: number}} Held
 * @typedef {{type: "batch", job: string, lease: string, items: [number, any][], lease_timeout: number, bytes: number, received: number}} BatchFrame
 * @typedef {{type: string, [key: string]: any}} Frame
 */

/** Sans-I/O client state: pending requests and results, held leases, queued batches. */
export class ClientSession {
  /**
   * @param {{token?: string | null, resumable?: boolean, session?: string | null, client?: string}} [options]
   */
  constructor({ token = null, resumable = false, session = null, client = `${CLIENT_NAME} ${RUNTIME}` } = {}) {
    this.token = token;
    this.client = client;
    /** Ask the server to keep this session's leases through a blip. */
    this.resumable = resumable || session !== null;
    /** @type {string | null} the session id to present in the next hello */
    this.sessionId = session;
    /** Whether the leases of a dropped connection may still be ours (resume pending). */
    this.parked = session !== null;
    this.connected = false;
    this.failures = 0; // connection attempts since the server last sent anything useful
    /** @type {number | null} seconds the server asked us to wait (goodbye) */
    this.retryAfter = null;
    this.maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES;
    this.resumeGrace = 0;
    this.server = "";
    /** @type {Frame[]} to send, in this order, on the current connection */
    this.outbox = [];
    /** @type {Map<number, Frame>} requests and results not yet answered */
    this.pending = new Map();
    /** @type {Map<number, Frame | PlanchetError>} */
    this.answers = new Map();
    /** @type {Set<number>} the caller gave up: its answer is thrown away */
    this.abandoned = new Set();
    /** @type {Map<string, Frame>} the jobs being consumed, sent on each connect */
    this.credits = new Map();
    /** @type {Map<string, Set<number>>} unsettled leases of dropped connections */
    this.stale = new Map();
    /** @type {Map<string, PlanchetError>} jobs whose worker must stop (circuit breaker) */
    this.circuits = new Map();
    /** @type {Frame | null} the watch kept up: sent again on each new connection */
    this.watching = null;
    /** @type {Frame | null} the newest status frame */
    this.status = null;
    /** Status frames received so far: a reader waits for it to change. */
    this.statuses = 0;
    this._lastId = 0;
    this._forgetLeases();
    this._forgetConnection();
  }

  _forgetLeases() {
    /** @type {Map<string, BatchFrame[]>} */
    this.batches = new Map();
    /** @type {Map<string, Map<string, Held>>} job -> lease -> what is held */
    this.held = new Map();
  }

  _forgetConnection() {
    /** @type {Map<string, number[]>} job -> keys of results sent, oldest first */
    this.acks = new Map();
    /** @type {Map<string, PlanchetError | null>} job -> null: done; else why it ended */
    this.ended = new Map();
  }

  // --- connecting -------------------------------------------------------------------

  /** The hello for a new connection: resumable ones name their session and leases. */
  hello() {
    /** @type {Frame} */
    const hello = { type: "hello", protocol: PROTOCOL_VERSION, token: this.token, client: this.client };
    if (this.resumable) {
      hello.resumable = true;
      hello.session = this.sessionId;
      hello.leases = this.sessionId === null ? [] : this.resumeLeases();
    }
    return hello;
  }

  /** The leases this client holds and settles itself: in hand, queued, or in a result
   * not yet acked (its ack may have been lost with the connection). */
  resumeLeases() {
    const leases = new Set();
    for (const held of this.held.values()) for (const lease of held.keys()) leases.add(lease);
    for (const message of this.pending.values()) {
      if (message.type === "result" && message.lease != null) leases.add(message.lease);
    }
    return [...leases];
  }

  /**
   * Seconds to wait before the next connection attempt; null: give up.
   * `hint` (else the goodbye's retry_after) is the server's wish, at most 60 s.
   * @param {number} retries
   * @param {number} [hint]
   */
  nextDelay(retries, hint = 0) {
    if (this.failures > retries) {
      this.failures = 0; // the next call starts a fresh round
      return null;
    }
    this.failures += 1;
    const wish = Math.max(hint, this.retryAfter ?? 0);
    this.retryAfter = null;
    return Math.max(backoff(this.failures - 1), Math.min(wish, 60));
  }

  nextId() {
    this._lastId += 1;
    return this._lastId;
  }

  /**
   * Check the server's answer to the hello; then queue what the connection owes.
   * @param {any} frame
   * @returns {{resumed: boolean, session: string | null}}
   */
  welcome(frame) {
    const msg = decodeFrame(frame);
    if (msg.type === "error") {
      const error = errorFromFrame(msg);
      error.final = true;
      throw error;
    }
    if (msg.type !== "welcome") {
      throw new PlanchetError(`expected welcome, got ${JSON.stringify(msg.type)}`, { code: "protocol_error", final: true });
    }
    const resumed = this.parked && msg.resumed === true;
    if (!resumed) this._dropLeases();
    this.parked = false;
    this.sessionId = this.resumable ? (msg.session ?? null) : null;
    this.resumeGrace = msg.resume_grace ?? 0;
    this.maxMessageBytes = msg.max_message_bytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.server = msg.server ?? "";
    this.connected = true;
    this.outbox = [...this.credits.values(), ...this.pending.values()];
    const watchPending = [...this.pending.values()].some((message) => message.type === "watch");
    // its reply has no one waiting: a reply to an id not pending is dropped
    if (this.watching !== null && !watchPending) this.outbox.push({ ...this.watching, id: this.nextId() });
    for (const [key, message] of this.pending) {
      if (message.type === "result") this._ackQueue(message.job).push(key);
    }
    return { resumed, session: this.sessionId };
  }

  /** The connection is gone. A resumable session keeps its leases for the next hello;
   * any other forgets them now: the server requeued them. */
  disconnected() {
    this.connected = false;
    this.outbox = [];
    for (const key of [...this.abandoned]) {
      if (this.pending.has(key)) this._answer(key, new PlanchetError("abandoned", { code: "connection_lost" }));
    }
    this.parked = this.resumable && this.sessionId !== null;
    if (!this.parked) this._dropLeases();
    this._forgetConnection();
  }

  /** The leases of the old connection are the server's again: remember them as stale,
   * answer their pending results as dropped, throw away queued batches. */
  _dropLeases() {
    const queued = new Set();
    for (const batches of this.batches.values()) for (const batch of batches) queued.add(batch.lease);
    for (const held of this.held.values()) {
      for (const [lease, { ids }] of held) if (!queued.has(lease)) this.stale.set(lease, ids);
    }
    while (this.stale.size > MAX_STALE) this.stale.delete(this.stale.keys().next().value);
    for (const [key, message] of [...this.pending]) {
      if (message.type === "result" && message.lease != null) this._answer(key, droppedAck(message));
    }
    this._forgetLeases();
  }

  /**
   * No connection can be had: answer everything pending, end every job's batches.
   * @param {PlanchetError} error
   */
  fail(error) {
    for (const key of [...this.pending.keys()]) this._answer(key, error);
    for (const job of this.credits.keys()) this.ended.set(job, error);
    this.credits.clear();
    this.acks.clear();
  }

  // --- what the caller sends --------------------------------------------------------

  /**
   * Queue a request (it gets an `id` from `nextId` if it has none); its key is that id.
   * @param {Frame} message
   */
  request(message) {
    if (message.id == null) message.id = this.nextId();
    this._queue(message.id, message);
    return message.id;
  }

  /**
   * Queue a release: its items are no longer ours, whatever the answer.
   * @param {Frame} message
   */
  release(message) {
    const held = this._held(message.job);
    if (message.ids == null) held.delete(message.lease);
    else this._strike(held, message.lease, message.ids);
    return this.request(message);
  }

  /**
   * Queue results; the key under which their ack will be filed.
   * @param {Frame} message
   */
  result(message) {
    const key = this.nextId();
    const ids = [...message.items.map((/** @type {[number, any]} */ e) => e[0]), ...message.errors.map((/** @type {{id: number}} */ e) => e.id)];
    if (message.lease != null && this.stale.has(message.lease)) {
      const stale = /** @type {Set<number>} */ (this.stale.get(message.lease));
      for (const id of ids) stale.delete(id);
      if (stale.size === 0) this.stale.delete(message.lease);
      this.answers.set(key, droppedAck(message)); // the server requeued it when the connection dropped
      return key;
    }
    this._strike(this._held(message.job), message.lease, ids); // any other lease, or none: the server decides
    this._queue(key, message);
    return key;
  }

  /**
   * Ask for batches of a job, on this connection and on every later one.
   * @param {Frame} message
   */
  credit(message) {
    this.credits.set(message.job, message);
    if (this.ended.get(message.job) === null) this.ended.delete(message.job); // done, but it may have been cleaned
    if (this.connected) this.outbox.push(message);
  }

  /**
   * Queue a watch; its key. The server pushes `status` frames until a watch with
   * interval 0; the latest watch is sent again on each new connection.
   * @param {Frame} message
   */
  watch(message) {
    this.watching = message.interval > 0 ? message : null;
    return this.request(message);
  }

  /**
   * The job's consumer has stopped: do not ask for more on a new connection.
   * @param {string} job
   */
  uncredit(job) {
    this.credits.delete(job);
  }

  /**
   * The caller stopped waiting for `key` (it timed out, was cancelled...).
   * @param {number} key
   */
  abandon(key) {
    this.answers.delete(key);
    if (!this.pending.has(key)) return;
    if (this.connected) this.abandoned.add(key); // sent, or about to be: its answer must still be matched
    else this.pending.delete(key);
  }

  takeOutbox() {
    const messages = this.outbox;
    this.outbox = [];
    return messages;
  }

  /** @param {number} key @param {Frame} message */
  _queue(key, message) {
    this.pending.set(key, message);
    if (!this.connected) return;
    this.outbox.push(message);
    if (message.type === "result") this._ackQueue(message.job).push(key);
  }

  /** @param {string} job */
  _ackQueue(job) {
    let keys = this.acks.get(job);
    if (keys === undefined) this.acks.set(job, (keys = []));
    return keys;
  }

  /** @param {string} job */
  _held(job) {
    let held = this.held.get(job);
    if (held === undefined) this.held.set(job, (held = new Map()));
    return held;
  }

  /** @param {Map<string, Held>} held @param {string | null | undefined} lease @param {number[]} ids */
  _strike(held, lease, ids) {
    const entry = held.get(lease ?? "");
    if (entry === undefined) return;
    for (const id of ids) entry.ids.delete(id);
    if (entry.ids.size === 0) held.delete(lease ?? "");
  }

  // --- what the server sends --------------------------------------------------------

  /**
   * File one frame from the server and return it (null if it made no sense). Never
   * throws: a frame that makes no sense fails whatever was waiting.
   * @param {any} frame
   * @param {number} [now] when it came (ms), for the lease's heartbeat
   * @returns {Frame | null}
   */
  receive(frame, now = 0) {
    let msg;
    try {
      msg = decodeFrame(frame);
    } catch (err) {
      this.fail(/** @type {PlanchetError} */ (err));
      return null;
    }
    this.failures = 0;
    this._file(msg, frame, now);
    return msg;
  }

  /** @param {Frame} msg @param {any} frame @param {number} now */
  _file(msg, frame, now) {
    const acks = msg.job != null ? this.acks.get(msg.job) : undefined;
    if (msg.type === "batch") {
      msg.bytes = msg === frame ? 0 : frameBytes(frame); // 0 for a frame given as an object
      msg.received = now;
      const ids = new Set(msg.items.map((/** @type {[number, any]} */ e) => e[0]));
      this._held(msg.job).set(msg.lease, { ids, received: now, leaseTimeout: msg.lease_timeout });
      let queue = this.batches.get(msg.job);
      if (queue === undefined) this.batches.set(msg.job, (queue = []));
      queue.push(/** @type {BatchFrame} */ (msg));
    } else if (msg.type === "status") {
      this.status = msg;
      this.statuses += 1;
    } else if (msg.type === "event" && msg.event === "done") {
      this.ended.set(msg.job, null);
    } else if (msg.type === "event" && msg.event === "deleted") {
      this.ended.set(msg.job, new PlanchetError(`job ${msg.job} was deleted`, { code: "job_deleted" }));
    } else if (msg.type === "error" && msg.code === "circuit_open" && msg.id == null && msg.job != null) {
      this.openCircuit(msg.job, errorFromFrame(msg)); // the server cut us off the job: it answers no result
    } else if ((msg.type === "reply" || msg.type === "error") && msg.id != null) {
      this._answer(msg.id, msg);
    } else if ((msg.type === "ack" || msg.type === "error") && acks !== undefined && acks.length > 0) {
      this._answer(/** @type {number} */ (acks.shift()), msg); // the oldest result's answer
    } else if (msg.type === "error" && msg.job != null) {
      this.ended.set(msg.job, errorFromFrame(msg)); // a refused credit: the job's consumer hears
    } else if (msg.type === "error") {
      this.fail(errorFromFrame(msg)); // about the connection itself; the server closes it next
    } else if (msg.type === "goodbye") {
      this.retryAfter = msg.retry_after ?? null;
    }
  }

  /** @param {number} key @param {Frame | PlanchetError} answer */
  _answer(key, answer) {
    if (!this.pending.delete(key)) return;
    if (this.abandoned.delete(key)) return;
    this.answers.set(key, answer);
  }

  // --- what the caller waits for ----------------------------------------------------

  /** @param {number} key */
  hasAnswer(key) {
    return this.answers.has(key);
  }

  /**
   * The answer to `key` once it has come, else undefined; an error answer throws.
   * @param {number} key
   * @returns {Frame | undefined}
   */
  answer(key) {
    const got = this.answers.get(key);
    this.answers.delete(key);
    if (got instanceof PlanchetError) throw got;
    if (got !== undefined && got.type === "error") throw errorFromFrame(got);
    return got;
  }

  /** @param {string} job */
  hasBatch(job) {
    return (this.batches.get(job)?.length ?? 0) > 0 || this.ended.has(job) || this.circuits.has(job);
  }

  /**
   * The job's worker must stop (it failed every item of batch after batch): the next
   * `takeBatch` throws `error` (code circuit_open), before any batch still queued.
   * @param {string} job @param {PlanchetError} error
   */
  openCircuit(job, error) {
    if (!this.circuits.has(job)) this.circuits.set(job, error);
  }

  /**
   * The next batch of `job`, `DONE`, or null while neither has come. Batches that came
   * before the end are served first. An error that ended the job's batches (deleted, a
   * refused credit, no connection) is thrown once.
   * @param {string} job
   * @returns {BatchFrame | typeof DONE | null}
   */
  takeBatch(job) {
    const circuit = this.circuits.get(job);
    if (circuit !== undefined) {
      this.circuits.delete(job);
      this.credits.delete(job);
      throw circuit;
    }
    const queue = this.batches.get(job);
    if (queue !== undefined && queue.length > 0) return /** @type {BatchFrame} */ (queue.shift());
    if (!this.ended.has(job)) return null;
    const error = this.ended.get(job);
    if (error === null) return DONE;
    this.ended.delete(job);
    this.credits.delete(job);
    throw error;
  }

  /**
   * Whether `item` of `lease` is held, unsettled, by this client.
   * @param {string} job @param {string} lease @param {number} item
   */
  holds(job, lease, item) {
    return this.held.get(job)?.get(lease)?.ids.has(item) ?? false;
  }

  /**
   * The leases of `job` held unsettled, with when they came and their lease_timeout.
   * @param {string} job
   * @returns {Array<{lease: string, received: number, leaseTimeout: number}>}
   */
  heldLeases(job) {
    const held = this.held.get(job);
    if (held === undefined) return [];
    return [...held].map(([lease, { received, leaseTimeout }]) => ({ lease, received, leaseTimeout }));
  }
}
