// PlanchetWorker against a real server (see support.js for the environment).
import { test } from "node:test";
import assert from "node:assert/strict";
import { PlanchetClient, PlanchetWorker } from "../planchet.js";
import { DATA_DIR, MASTER, Proxy, URL_, eventually, jobName, readLines, skip, writeInput } from "./support.js";

const N = 120;
const records = (n = N, pad = 0) => Array.from({ length: n }, (_, i) => ({ text: `headline number ${i}`.padEnd(pad, ".") }));

/** Start a job over fresh input; its name and file names. */
async function startJob(what, { n = N, pad = 0, ...options } = {}) {
  const job = jobName(what);
  const input = writeInput(`${job}.in.jsonl`, records(n, pad));
  const client = new PlanchetClient(URL_, { token: MASTER });
  try {
    await client.startJob(job, { input_file_path: input, output_file_path: `${job}.out.jsonl` }, { batchSize: 7, ...options });
  } finally {
    await client.close();
  }
  return { job, output: `${job}.out.jsonl`, errors: `${job}.out.jsonl.errors.jsonl` };
}

/** id -> result value of an output file, checking that no id is there twice. */
function byId(file) {
  const out = new Map();
  for (const { id, item } of readLines(file)) {
    assert.equal(out.has(id), false, `id ${id} twice in ${file}`);
    out.set(id, item);
  }
  return out;
}

test("a worker finishes a job with exact output", { skip }, async () => {
  const { job, output, errors } = await startJob("exact");
  const worker = new PlanchetWorker(URL_, { job, token: MASTER, prefetch: 2 });
  const states = [];
  const progress = [];
  worker.addEventListener("state", (e) => states.push(e.detail.state));
  worker.addEventListener("progress", (e) => progress.push(e.detail));
  const end = await worker.run(async (items, { ids, lease }) => {
    assert.equal(items.length, ids.length);
    assert.equal(typeof lease, "string");
    return items.map((item) => item.text.length);
  });
  assert.equal(end.reason, "done");
  assert.equal(end.done, N);
  const out = byId(output);
  assert.deepEqual([...out.keys()].sort((a, b) => a - b), records().map((_, i) => i));
  for (const [id, length] of out) assert.equal(length, records()[id].text.length);
  assert.deepEqual(readLines(errors), []);
  assert.equal(states[0], "connecting");
  assert.ok(states.includes("working"));
  assert.equal(states.at(-1), "done");
  assert.equal(progress.at(-1).done, N);
  assert.equal(progress.at(-1).batches, Math.ceil(N / 7));
});

test("per-item failures go to the error file; a thrown error retries the whole batch", { skip }, async () => {
  const { job, output, errors } = await startJob("failures", { maxAttempts: 2 });
  const worker = new PlanchetWorker(URL_, { job, token: MASTER });
  let thrown = 0;
  const reported = [];
  worker.addEventListener("error", (e) => reported.push(e.detail));
  const end = await worker.run((items, { ids }) => {
    if (ids.includes(0) && thrown === 0) {
      thrown += 1;
      throw new Error("flaky model");
    }
    return ids.map((id, i) => (id % 2 ? PlanchetWorker.fail(`odd ${id}`, { retry: false }) : items[i].text.toUpperCase()));
  });
  assert.equal(end.reason, "done");
  assert.equal(reported.length, 1);
  assert.equal(reported[0].fatal, false);
  const out = byId(output);
  assert.deepEqual([...out.keys()].sort((a, b) => a - b), records().map((_, i) => i).filter((i) => i % 2 === 0));
  for (const [id, text] of out) assert.equal(text, records()[id].text.toUpperCase());
  const failed = readLines(errors);
  assert.deepEqual(failed.map((e) => e.id).sort((a, b) => a - b), records().map((_, i) => i).filter((i) => i % 2 === 1));
  for (const line of failed) assert.equal(line.error, `odd ${line.id}`);
  assert.equal(end.failed, N / 2);
  assert.ok(end.retried >= 1);
});

test("batches respect the worker's byte cap, even requeued ones", { skip }, async () => {
  const cap = 2048;
  const { job, output, errors } = await startJob("bytecap", { n: 60, pad: 300, batchSize: 50, maxAttempts: 3 });
  const worker = new PlanchetWorker(URL_, { job, token: MASTER, maxBatchBytes: cap, batchSize: 50 });
  const sizes = [];
  worker.addEventListener("batch", (e) => sizes.push(e.detail));
  let failedOnce = false;
  await worker.run((items, { ids }) => {
    if (!failedOnce) { // a requeued batch comes back split to the cap too
      failedOnce = true;
      return ids.map((id) => PlanchetWorker.fail(`again ${id}`));
    }
    return items.map((item) => item.text.length);
  });
  assert.ok(sizes.length > 60 * 300 / cap, `${sizes.length} batches`);
  for (const { bytes, size } of sizes) assert.ok(bytes <= cap || size === 1, `a batch of ${size} items is ${bytes} bytes`);
  assert.equal(byId(output).size, 60);
  assert.deepEqual(readLines(errors), []);
});

test("a worker reconnects after the connection drops, resumes its lease, and finishes exactly", { skip }, async () => {
  const { job, output, errors } = await startJob("reconnect", { maxAttempts: 1 });
  const proxy = new Proxy();
  const url = await proxy.start();
  const worker = new PlanchetWorker(url, { job, token: MASTER, prefetch: 2 });
  const sessions = [];
  worker.addEventListener("session", (e) => sessions.push(e.detail));
  let dropped = false;
  try {
    const end = await worker.run(async (items) => {
      if (!dropped) { // cut the line while holding this batch, and finish it after the reconnect
        dropped = true;
        proxy.drop();
        await eventually(() => sessions.length >= 2, "a second connection");
      }
      return items.map((item) => item.text.length);
    });
    assert.equal(end.reason, "done");
  } finally {
    await proxy.stop();
  }
  assert.ok(proxy.connections >= 2);
  assert.equal(sessions[1].resumed, true, "the second connection resumed the session");
  assert.equal(sessions[1].session, sessions[0].session);
  assert.equal(byId(output).size, N);
  assert.deepEqual(readLines(errors), [], "nothing charged: max_attempts 1 would have failed it");
});

test("stop() hands the held leases back, uncharged, and a second worker finishes", { skip }, async () => {
  const { job, output, errors } = await startJob("stop", { maxAttempts: 1 });
  const first = new PlanchetWorker(URL_, { job, token: MASTER, prefetch: 3 });
  const stopped = first.run(async (items) => {
    await first.stop();
    return items.map(() => "never sent");
  });
  assert.equal((await stopped).reason, "stopped");
  assert.equal(first.state, "stopped");
  const client = new PlanchetClient(URL_, { token: MASTER });
  const report = await client.report(job);
  await client.close();
  assert.equal(report.in_flight, 0);
  assert.equal(report.failed, 0);
  const second = new PlanchetWorker(URL_, { job, token: MASTER });
  await second.run((items) => items.map((item) => item.text.length));
  assert.equal(byId(output).size, N);
  assert.deepEqual(readLines(errors), []);
});

test("extend heartbeats keep a lease alive while a batch outlasts its lease_timeout", { skip }, async () => {
  // a lease of 2 s, extended after 1 s: a second of slack for a busy machine's stalls
  const { job, output, errors } = await startJob("heartbeat", { n: 4, batchSize: 2, leaseTimeout: 2, maxAttempts: 1 });
  const worker = new PlanchetWorker(URL_, { job, token: MASTER, prefetch: 1 });
  await worker.run(async (items) => {
    const start = Date.now(); // the work itself outlasts the lease: that is the case under test
    await eventually(() => Date.now() - start > 4500, "the work to outlast its lease");
    return items.map((item) => item.text.length);
  });
  assert.equal(byId(output).size, 4);
  assert.deepEqual(readLines(errors), []);
  assert.equal(worker.progress.dropped, 0);
});

test("a deleted job ends run() with reason deleted", { skip }, async () => {
  const { job } = await startJob("deleted");
  const worker = new PlanchetWorker(URL_, { job, token: MASTER, prefetch: 1 });
  const end = await worker.run(async (items) => {
    const admin = new PlanchetClient(URL_, { token: MASTER });
    await admin.delete(job);
    await admin.close();
    return items.map(() => 0);
  });
  assert.equal(end.reason, "deleted");
});

test("a refused credit rejects run() with the server's error", { skip }, async () => {
  const { job } = await startJob("refused", { token: "admin-secret" });
  const worker = new PlanchetWorker(URL_, { job, token: "wrong" });
  const errors = [];
  worker.addEventListener("error", (e) => errors.push(e.detail));
  await assert.rejects(worker.run((items) => items), { code: "unauthorized" });
  assert.equal(errors.at(-1).fatal, true);
  assert.equal(worker.state, "stopped");
  void DATA_DIR;
});

test("run() ends at a final close even while its handler hangs", { skip, timeout: 30_000 }, async () => {
  const { job } = await startJob("hang");
  const worker = new PlanchetWorker(URL_, { job, token: MASTER, prefetch: 1 });
  let started = () => {};
  const handling = new Promise((resolve) => { started = resolve; });
  const running = worker.run(() => { started(); return new Promise(() => {}); });  // never settles
  const ended = running.then(() => null, (err) => err);  // handled at once: it may end early
  await handling;
  const thief = new PlanchetClient(URL_, { token: MASTER, session: worker.session });
  await thief.connect();  // takes the session over: the worker's connection gets 4001
  assert.equal((await ended)?.code, "session_taken");
  await thief.close();
});
