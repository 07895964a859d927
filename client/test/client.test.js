// PlanchetClient against a real server (see support.js for the environment).
import { test } from "node:test";
import assert from "node:assert/strict";
import { PlanchetClient, PlanchetError, PlanchetWorker } from "../planchet.js";
import { MASTER, URL_, jobName, readLines, skip, writeInput } from "./support.js";

/** A connected client and a fresh job of `n` records; closed by the caller. */
async function withJob(what, n, options = {}) {
  const client = new PlanchetClient(URL_, { token: MASTER });
  const job = jobName(what);
  const input = writeInput(`${job}.in.jsonl`, Array.from({ length: n }, (_, i) => ({ n: i })));
  const report = await client.startJob(job, { input_file_path: input, output_file_path: `${job}.out.jsonl` }, { batchSize: 5, ...options });
  return { client, job, report, output: `${job}.out.jsonl` };
}

test("job commands answer with reports; unknown jobs with job_not_found", { skip }, async () => {
  const { client, job, report } = await withJob("commands", 10);
  try {
    assert.equal(report.job, job);
    assert.equal(report.state, "running");
    assert.equal((await client.pause(job)).state, "paused");
    assert.equal((await client.resume(job)).state, "running");
    assert.ok((await client.jobs()).some((r) => r.job === job));
    await assert.rejects(client.report(`${job}-none`), (err) => err instanceof PlanchetError && err.code === "job_not_found");
    assert.deepEqual(await client.delete(job), { deleted: job });
  } finally {
    await client.close();
  }
});

test("batches() yields leased batches; ack, release and extend answer as the protocol says", { skip }, async () => {
  const { client, job, output } = await withJob("batches", 20, { maxAttempts: 1 });
  try {
    let released = null;
    let extended = null;
    for await (const batch of client.batches(job, { prefetch: 1 })) {
      if (released === null) {
        extended = await batch.extend(30);
        released = await batch.release(); // back to the queue, no attempt charged
        continue;
      }
      const ack = await batch.ack(batch.items.map(([id, item]) => [id, item.n * 2]));
      assert.equal(ack.written, batch.items.length);
      assert.equal(ack.dropped, 0);
    }
    assert.deepEqual(extended, { lease: extended.lease, held: true, lease_timeout: 30 });
    assert.deepEqual(released, { lease: extended.lease, released: 5, dropped: 0 });
    const lines = readLines(output);
    assert.deepEqual(lines.map((l) => l.id).sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i));
    for (const { id, item } of lines) assert.equal(item, id * 2);
    assert.deepEqual(readLines(`${output}.errors.jsonl`), []);
    const gone = await client.extend(job, extended.lease);
    assert.deepEqual(gone, { lease: extended.lease, held: false, lease_timeout: null });
  } finally {
    await client.close();
  }
});

test("results bigger than max_message_bytes are sent in several frames", { skip }, async () => {
  const { client, job, output } = await withJob("split", 5, { batchSize: 5 });
  try {
    client.state.maxMessageBytes = 4096; // as if the server had said so in its welcome
    const session = client.state;
    const queue = session.result.bind(session);
    let frames = 0;
    session.result = (message) => { frames += 1; return queue(message); }; // count the frames
    for await (const batch of client.batches(job, { prefetch: 1 })) {
      const ack = await batch.ack(batch.items.map(([id]) => [id, "x".repeat(1500)]));
      assert.equal(ack.written, batch.items.length);
    }
    assert.ok(frames >= 3, `${frames} result frames`);
    assert.equal(readLines(output).length, 5);
  } finally {
    await client.close();
  }
});

test("a worker token takes batches and sends results, and may not pause or delete", { skip }, async () => {
  const { client, job, output } = await withJob("token", 10, { token: "admin-secret" });
  try {
    const grant = await client.grantToken([job], { label: "volunteers", token: "admin-secret" });
    assert.ok(grant.token.startsWith("pw_"));
    const volunteer = new PlanchetClient(URL_, { token: grant.token });
    try {
      await assert.rejects(volunteer.pause(job), { code: "unauthorized" });
      await assert.rejects(volunteer.delete(job), { code: "unauthorized" });
    } finally {
      await volunteer.close();
    }
    const worker = new PlanchetWorker(URL_, { job, token: grant.token });
    assert.equal((await worker.run((items) => items.map((item) => item.n))).reason, "done");
    assert.equal(readLines(output).length, 10);
    const listed = await client.workerTokens(job, { token: "admin-secret" });
    assert.deepEqual(listed.map((t) => t.key), [grant.key]);
    assert.deepEqual(await client.revokeToken(grant.key, { token: "admin-secret" }), { revoked: grant.key });
  } finally {
    await client.close();
  }
});

test("a final close code ends the client with no reconnect", { skip }, async () => {
  const client = new PlanchetClient(URL_);
  await client.connect();
  await assert.rejects(client.request({ type: "report", job: "x", surprise: 1 }), (err) => err.code === "bad_message" || err.code === "connection_lost");
  await assert.rejects(client.report("x"), { code: "connection_lost", final: true });
  await client.close();
});
