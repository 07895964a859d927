// PlanchetWorker's circuit breaker against a real server (see support.js for the environment).
import { test } from "node:test";
import assert from "node:assert/strict";
import { PlanchetClient, PlanchetWorker } from "../planchet.js";
import { ClientSession } from "../session.js";
import { MASTER, URL_, eventually, jobName, readLines, skip, writeInput } from "./support.js";

const WRONG = "TypeError: the handler answered in the wrong shape";

/** A job of 70 items, 7 a batch, each failed for good at its first failure. */
async function startJob(what) {
  const job = jobName(what);
  const input = writeInput(`${job}.in.jsonl`, Array.from({ length: 70 }, (_, i) => ({ n: i })));
  const client = new PlanchetClient(URL_, { token: MASTER });
  try {
    await client.startJob(job, { input_file_path: input, output_file_path: `${job}.out.jsonl` }, { batchSize: 7, maxAttempts: 1 });
  } finally {
    await client.close();
  }
  return { job, errors: `${job}.out.jsonl.errors.jsonl` };
}

/** Run a worker that fails every item; the error run() rejected with, and the error events. */
async function failEverything(job, options = {}) {
  const worker = new PlanchetWorker(URL_, { job, token: MASTER, prefetch: 2, ...options });
  const events = [];
  worker.addEventListener("error", (e) => events.push(e.detail));
  const error = await worker.run((items) => items.map(() => PlanchetWorker.fail(WRONG))).then(
    (end) => assert.fail(`run() ended with ${JSON.stringify(end)}`), (err) => err);
  return { error, events, worker };
}

/** Wait until nothing is in flight and `n` items are in the error file; the error ids. */
async function settled(job, errors, n) {
  const client = new PlanchetClient(URL_, { token: MASTER });
  try {
    await eventually(async () => (await client.report(job)).in_flight === 0 && readLines(errors).length >= n, "the held batches back");
  } finally {
    await client.close();
  }
  return readLines(errors).map((e) => e.id).sort((a, b) => a - b);
}

test("a worker failing every item stops itself after 3 batches with circuit_open", { skip }, async () => {
  const { job, errors } = await startJob("breaker");
  const { error, events, worker } = await failEverything(job);
  assert.equal(error.code, "circuit_open");
  assert.match(error.message, new RegExp(`^the last 3 batches of job ${job} failed on every item \\(the last error: ${WRONG}\\)`));
  assert.match(error.message, /maxFailingBatches=3/);
  assert.equal(events.at(-1).fatal, true);
  assert.equal(events.at(-1).error, error);
  assert.equal(worker.state, "stopped");
  // results go out before the acks of earlier ones come back: a batch or two more may fail
  // before the third failing ack stops the worker, never the server's 5
  const failed = await settled(job, errors, 21);
  assert.ok(failed.length % 7 === 0 && failed.length < 35, `${failed.length} items failed`);
  assert.deepEqual(failed, Array.from({ length: failed.length }, (_, i) => i));
});

test("the server's breaker stops a worker whose own is off", { skip }, async () => {
  const { job, errors } = await startJob("server-breaker");
  const { error, events } = await failEverything(job, { maxFailingBatches: 0 });
  assert.equal(error.code, "circuit_open");
  assert.match(error.message, new RegExp(`^the last 5 batches of job ${job} failed on every item: this connection gets no more`));
  assert.equal(events.at(-1).fatal, true);
  assert.deepEqual(await settled(job, errors, 35), Array.from({ length: 35 }, (_, i) => i));
});

test("a circuit_open frame answers no result and ends the job's batches at once", () => {
  const session = new ClientSession();
  session.connected = true;
  const key = session.result({ type: "result", job: "j", lease: "l1", items: [], errors: [{ id: 1, message: "x", retry: true }] });
  session.receive({ type: "batch", job: "j", lease: "l2", items: [[2, "b"]], lease_timeout: 60 });
  session.receive({ type: "error", code: "circuit_open", message: "cut off", id: null, job: "j" });
  assert.equal(session.hasAnswer(key), false);
  session.receive({ type: "ack", job: "j", lease: "l1", written: 0, retried: 0, failed: 1, dropped: 0 });
  assert.equal(session.answer(key).failed, 1);
  assert.throws(() => session.takeBatch("j"), (err) => err.code === "circuit_open" && err.message === "cut off");
});
