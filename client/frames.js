// The frames of the wire protocol, with no state: errors, decoding, sizes, splitting
// results to fit the server's frame cap. session.js builds on them.

export const PROTOCOL_VERSION = 1;
export const VERSION = "1.0.0";
export const CLIENT_NAME = `planchet-js/${VERSION}`;
/** What `takeBatch` returns once a job is done. */
export const DONE = "done";
/** Leases of dropped connections remembered, to answer their results here. */
export const MAX_STALE = 1024;
/** At most this many `items` (and `errors`) in one result frame. */
export const MAX_RESULT_ENTRIES = 10000;
/** Assumed until the welcome says otherwise. */
export const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

const SERVER_TYPES = new Set(["welcome", "batch", "ack", "reply", "event", "error", "goodbye", "status"]);
const utf8 = new TextDecoder("utf-8", { fatal: true });

/** An error from the server (its `code`) or from the client (`connection_lost`,
 * `protocol_error`, `job_not_found`...). `final`: reconnecting will not help. */
export class PlanchetError extends Error {
  /**
   * @param {string} message
   * @param {{code?: string, retryAfter?: number | null, final?: boolean}} [options]
   */
  constructor(message, { code = "error", retryAfter = null, final = false } = {}) {
    super(message);
    this.name = "PlanchetError";
    /** @type {string} */
    this.code = code;
    /** @type {number | null} */
    this.retryAfter = retryAfter;
    /** @type {boolean} */
    this.final = final;
  }
}

/**
 * The PlanchetError an `error` frame stands for.
 * @param {{code: string, message: string, retry_after?: number | null}} frame
 * @returns {PlanchetError}
 */
export function errorFromFrame(frame) {
  return new PlanchetError(frame.message, { code: frame.code, retryAfter: frame.retry_after ?? null });
}

/**
 * Seconds to wait before a connection attempt that follows `failures` failed ones.
 * @param {number} failures
 * @param {number} [base]
 * @param {number} [cap]
 */
export function backoff(failures, base = 0.25, cap = 5.0) {
  return failures === 0 ? 0 : Math.min(cap, base * 2 ** (failures - 1));
}

/**
 * Bytes of `text` in UTF-8. Each half of a surrogate pair counts 2 (4 for the pair); a
 * lone one is never in JSON.stringify's output, which escapes it.
 * @param {string} text
 */
export function utf8Length(text) {
  let bytes = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0x80) bytes += c < 0x800 || (c >= 0xd800 && c < 0xe000) ? 1 : 2;
  }
  return bytes;
}

/**
 * The size in bytes of a frame as received (string, ArrayBuffer or a view).
 * @param {string | ArrayBuffer | ArrayBufferView} frame
 */
export function frameBytes(frame) {
  return typeof frame === "string" ? utf8Length(frame) : frame.byteLength;
}

/**
 * Parse one server frame; a frame that is not a server message raises `protocol_error`.
 * @param {string | ArrayBuffer | ArrayBufferView | object} frame
 * @returns {any}
 */
export function decodeFrame(frame) {
  let msg = frame;
  try {
    if (typeof frame === "string") msg = JSON.parse(frame);
    else if (frame instanceof ArrayBuffer || ArrayBuffer.isView(frame)) msg = JSON.parse(utf8.decode(frame));
  } catch (err) {
    throw new PlanchetError(`the server sent a frame that is not JSON: ${err}`, { code: "protocol_error", final: true });
  }
  if (msg === null || typeof msg !== "object" || !SERVER_TYPES.has(msg.type)) {
    const what = msg !== null && typeof msg === "object" ? `type ${JSON.stringify(msg.type)}` : typeof msg;
    throw new PlanchetError(`the server sent an unknown message (${what})`, { code: "protocol_error", final: true });
  }
  return msg;
}

/**
 * The ack of a result the server cannot take: its items were (or will be) requeued.
 * @param {{job: string, lease: string | null, items?: unknown[], errors?: unknown[]}} result
 */
export function droppedAck(result) {
  const dropped = (result.items ?? []).length + (result.errors ?? []).length;
  return { type: "ack", job: result.job, lease: result.lease ?? null, written: 0, retried: 0, failed: 0, dropped };
}

/**
 * Split a result into frames of at most `maxBytes` each (as JSON) and at most 10,000
 * items and errors. An item whose result alone cannot fit becomes an error (retry
 * false) that says so: the server would refuse the frame and close the connection.
 * @param {{type: "result", job: string, lease: string | null, items: [number, unknown][], errors: {id: number, message: string, retry?: boolean}[], token?: string | null}} result
 * @param {number} maxBytes
 * @returns {Array<typeof result>}
 */
export function splitResult(result, maxBytes) {
  const whole = JSON.stringify(result);
  const small = result.items.length <= MAX_RESULT_ENTRIES && result.errors.length <= MAX_RESULT_ENTRIES;
  if (small && (whole.length * 3 <= maxBytes || utf8Length(whole) <= maxBytes)) return [result];
  const room = maxBytes - utf8Length(JSON.stringify({ ...result, items: [], errors: [] })) - 16;
  const fresh = () => ({ ...result, items: [], errors: [] });
  const frames = [];
  let frame = fresh();
  let used = 0;
  /** @param {"items" | "errors"} key @param {any} entry */
  const add = (key, entry) => {
    const size = utf8Length(JSON.stringify(entry)) + 1;
    if ((used > 0 && used + size > room) || frame[key].length >= MAX_RESULT_ENTRIES) {
      frames.push(frame);
      frame = fresh();
      used = 0;
    }
    frame[key].push(entry);
    used += size;
  };
  for (const entry of result.items) {
    const size = utf8Length(JSON.stringify(entry));
    if (size > room) {
      add("errors", { id: entry[0], message: `result of ${size} bytes exceeds the server's max_message_bytes (${maxBytes})`, retry: false });
    } else add("items", entry);
  }
  for (const entry of result.errors) add("errors", entry);
  if (frame.items.length > 0 || frame.errors.length > 0 || frames.length === 0) frames.push(frame);
  return frames;
}
