// The protocol state with frames as plain objects: no socket, no server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ClientSession, DONE, PlanchetError, backoff, splitResult, utf8Length, decodeFrame } from "../session.js";

const WELCOME = { type: "welcome", protocol: 1, server: "planchet 1.0.0", max_message_bytes: 16777216, session: null, resume_grace: 10, resumed: false };
const batch = (job, lease, ids) => ({ type: "batch", job, lease, items: ids.map((i) => [i, { n: i }]), lease_timeout: 30 });
const ack = (job, lease, written) => ({ type: "ack", job, lease, written, retried: 0, failed: 0, dropped: 0 });
const result = (job, lease, ids) => ({ type: "result", job, lease, items: ids.map((i) => [i, i]), errors: [] });

function connected(options = {}, welcome = {}) {
  const session = new ClientSession(options);
  session.hello();
  session.welcome({ ...WELCOME, ...welcome });
  return session;
}

test("a plain hello carries no resume fields; a resumable one asks for a session", () => {
  assert.deepEqual(new ClientSession({ token: "t" }).hello(), { type: "hello", protocol: 1, token: "t", client: "planchet-js/1.0.0 node" });
  const hello = new ClientSession({ resumable: true }).hello();
  assert.equal(hello.resumable, true);
  assert.equal(hello.session, null);
  assert.deepEqual(hello.leases, []);
});

test("acks are matched to results in the order the results of a job were sent", () => {
  const session = connected();
  session.receive(batch("j", "L1", [0, 1]));
  session.receive(batch("j", "L2", [2]));
  const first = session.result(result("j", "L1", [0, 1]));
  const second = session.result(result("j", "L2", [2]));
  session.receive({ type: "event", job: "j", event: "paused" }); // between a result and its ack
  session.receive(ack("j", "L1", 2));
  assert.equal(session.hasAnswer(second), false);
  session.receive(ack("j", "L2", 1));
  assert.equal(session.answer(first).lease, "L1");
  assert.equal(session.answer(second).lease, "L2");
});

test("an error with no id answers the oldest result of its job", () => {
  const session = connected();
  const key = session.result(result("j", null, [5]));
  session.result(result("j", null, [6]));
  session.receive({ type: "error", code: "unavailable", message: "Redis failed", id: null, job: "j", retry_after: 1 });
  assert.throws(() => session.answer(key), (err) => err instanceof PlanchetError && err.code === "unavailable" && err.retryAfter === 1);
});

test("replies are matched by request id, whatever their order", () => {
  const session = connected();
  const a = session.request({ type: "report", job: "a" });
  const b = session.request({ type: "report", job: "b" });
  session.receive({ type: "reply", id: b, data: "B" });
  session.receive({ type: "reply", id: a, data: "A" });
  assert.equal(session.answer(a).data, "A");
  assert.equal(session.answer(b).data, "B");
  session.receive({ type: "error", code: "job_not_found", message: "no job named 'c'", id: session.request({ type: "report", job: "c" }), job: "c", retry_after: null });
  assert.throws(() => session.answer(3), { code: "job_not_found" });
});

test("batches are queued per job, and done ends a job after its batches", () => {
  const session = connected();
  session.credit({ type: "credit", job: "j", batches: 2 });
  session.receive(batch("j", "L1", [0]));
  session.receive({ type: "event", job: "j", event: "done" });
  assert.equal(session.takeBatch("j").lease, "L1");
  assert.equal(session.takeBatch("j"), DONE);
  assert.equal(session.takeBatch("other"), null);
});

test("a deleted job and a refused credit end the job's batches with an error, once", () => {
  const session = connected();
  session.receive({ type: "event", job: "j", event: "deleted" });
  assert.throws(() => session.takeBatch("j"), { code: "job_deleted" });
  assert.equal(session.takeBatch("j"), null);
  session.receive({ type: "error", code: "unauthorized", message: "wrong token for job k", id: null, job: "k", retry_after: null });
  assert.throws(() => session.takeBatch("k"), { code: "unauthorized" });
});

test("the batch frame's size in bytes is kept with the batch", () => {
  const session = connected();
  const frame = new TextEncoder().encode(JSON.stringify(batch("j", "L1", [0, 1])));
  session.receive(frame.buffer, 42);
  const got = session.takeBatch("j");
  assert.equal(got.bytes, frame.byteLength);
  assert.equal(got.received, 42);
  assert.deepEqual(session.heldLeases("j"), [{ lease: "L1", received: 42, leaseTimeout: 30 }]);
});

test("a resume hello names the session and every lease held, queued or awaiting its ack", () => {
  const session = connected({ resumable: true }, { session: "s1" });
  session.receive(batch("j", "L1", [0, 1]));
  session.receive(batch("j", "L2", [2]));
  session.receive(batch("j", "L3", [3]));
  session.takeBatch("j");
  session.result(result("j", "L3", [3])); // settles L3, but its ack has not come
  session.disconnected();
  const hello = session.hello();
  assert.equal(hello.session, "s1");
  assert.deepEqual(hello.leases.sort(), ["L1", "L2", "L3"]);
});

test("resumed: the leases stay held and pending results are sent again, acks matched anew", () => {
  const session = connected({ resumable: true }, { session: "s1" });
  session.credit({ type: "credit", job: "j", batches: 1 });
  session.receive(batch("j", "L1", [0, 1]));
  session.takeBatch("j");
  const key = session.result(result("j", "L1", [0]));
  session.takeOutbox();
  session.disconnected();
  assert.deepEqual(session.welcome({ ...WELCOME, session: "s1", resumed: true }), { resumed: true, session: "s1" });
  assert.deepEqual(session.takeOutbox().map((m) => m.type), ["credit", "result"]);
  assert.equal(session.holds("j", "L1", 1), true);
  session.receive(ack("j", "L1", 1));
  assert.equal(session.answer(key).written, 1);
  const later = session.result(result("j", "L1", [1]));
  assert.equal(session.takeOutbox().length, 1);
  session.receive(ack("j", "L1", 1));
  assert.equal(session.answer(later).written, 1);
});

test("not resumed: held leases are stale, their results answered here as dropped and never sent", () => {
  const session = connected({ resumable: true }, { session: "s1" });
  session.receive(batch("j", "L1", [0, 1]));
  session.receive(batch("j", "L2", [2]));
  session.takeBatch("j"); // L1 in hand; L2 still queued
  const pending = session.result(result("j", "L1", [0]));
  session.disconnected();
  assert.equal(session.hasAnswer(pending), false); // it may still be resumed
  session.welcome({ ...WELCOME, session: "s2", resumed: false });
  assert.equal(session.sessionId, "s2");
  assert.equal(session.answer(pending).dropped, 1);
  assert.equal(session.takeBatch("j"), null); // the queued batch is thrown away
  const late = session.result(result("j", "L1", [1]));
  assert.equal(session.answer(late).dropped, 1);
  assert.deepEqual(session.takeOutbox(), []);
  assert.deepEqual(session.hello().leases, []);
});

test("a session that is not resumable forgets its leases as soon as the connection drops", () => {
  const session = connected();
  session.receive(batch("j", "L1", [0]));
  session.takeBatch("j");
  const request = session.request({ type: "report", job: "j" });
  session.disconnected();
  assert.equal(session.answer(session.result(result("j", "L1", [0]))).dropped, 1);
  session.welcome(WELCOME);
  assert.deepEqual(session.takeOutbox().map((m) => m.id), [request]); // requests are sent again
});

test("a release takes the lease (or its ids) out of the held ones", () => {
  const session = connected({ resumable: true }, { session: "s" });
  session.receive(batch("j", "L1", [0, 1, 2]));
  session.receive(batch("j", "L2", [3]));
  session.release({ type: "release", job: "j", lease: "L1", ids: [0] });
  assert.equal(session.holds("j", "L1", 0), false);
  assert.equal(session.holds("j", "L1", 1), true);
  session.release({ type: "release", job: "j", lease: "L2", ids: null });
  assert.deepEqual(session.heldLeases("j").map((h) => h.lease), ["L1"]);
});

test("backoff doubles up to its cap; a goodbye's retry_after is honoured once; retries run out", () => {
  assert.deepEqual([0, 1, 2, 3, 10].map((n) => backoff(n)), [0, 0.25, 0.5, 1, 5]);
  const session = connected();
  session.receive({ type: "goodbye", reason: "server shutting down", retry_after: 5 });
  session.disconnected();
  assert.equal(session.nextDelay(3), 5);
  assert.equal(session.nextDelay(3), 0.25);
  assert.equal(session.nextDelay(3), 0.5);
  assert.equal(session.nextDelay(3), 1);
  assert.equal(session.nextDelay(3), null);
  assert.equal(session.nextDelay(3), 0); // a fresh round
  session.receive({ type: "event", job: "j", event: "paused" });
  assert.equal(session.failures, 0);
});

test("a welcome that is an error, or no welcome, is final", () => {
  const session = new ClientSession();
  assert.throws(() => session.welcome({ type: "error", code: "unsupported_protocol", message: "no", id: null, job: null }), { code: "unsupported_protocol", final: true });
  assert.throws(() => session.welcome({ type: "batch" }), { code: "protocol_error" });
  assert.throws(() => decodeFrame("not json"), { code: "protocol_error" });
});

test("a frame that makes no sense fails everything pending", () => {
  const session = connected();
  const key = session.request({ type: "jobs" });
  session.credit({ type: "credit", job: "j", batches: 1 });
  assert.equal(session.receive("{\"type\":\"surprise\"}"), null);
  assert.throws(() => session.answer(key), { code: "protocol_error" });
  assert.throws(() => session.takeBatch("j"), { code: "protocol_error" });
});

test("results larger than the frame cap are split; a result that cannot fit becomes an error", () => {
  const items = Array.from({ length: 50 }, (_, i) => [i, "é".repeat(100)]);
  const frames = splitResult({ type: "result", job: "j", lease: "L", items, errors: [{ id: 99, message: "x", retry: true }] }, 2048);
  assert.ok(frames.length > 1);
  for (const frame of frames) assert.ok(utf8Length(JSON.stringify(frame)) <= 2048);
  assert.deepEqual(frames.flatMap((f) => f.items), items);
  assert.deepEqual(frames.flatMap((f) => f.errors).map((e) => e.id), [99]);
  const [only] = splitResult({ type: "result", job: "j", lease: "L", items: [[0, "x".repeat(5000)]], errors: [] }, 2048);
  assert.deepEqual(only.items, []);
  assert.equal(only.errors[0].retry, false);
  const many = splitResult({ type: "result", job: "j", lease: "L", items: Array.from({ length: 25000 }, (_, i) => [i, 0]), errors: [] }, 16777216);
  assert.deepEqual(many.map((f) => f.items.length), [10000, 10000, 5000]);
});

test("utf8Length counts UTF-8 bytes", () => {
  for (const text of ["abc", "é", "€", "😀", "a😀é€"]) assert.equal(utf8Length(text), new TextEncoder().encode(text).length);
});
