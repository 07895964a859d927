// Watching: status frames filed by the sans-I/O session, the watch sent again on reconnect.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ClientSession } from "../session.js";
import { PlanchetClient } from "../planchet.js";
import { MASTER, URL_, jobName, skip, writeInput } from "./support.js";

const WELCOME = { type: "welcome", protocol: 1, server: "planchet 1.0.0", max_message_bytes: 16777216, session: null, resume_grace: 10, resumed: false };
const status = (time) => ({ type: "status", time, server: { version: "1.0.0", connections: 1, workers: 0, redis: "online" }, jobs: [] });

function connected() {
  const session = new ClientSession();
  session.hello();
  session.welcome(WELCOME);
  return session;
}

test("status frames are filed: the newest is kept and counted", () => {
  const session = connected();
  assert.equal(session.receive(JSON.stringify(status(1))).type, "status");
  session.receive(status(2));
  assert.equal(session.statuses, 2);
  assert.equal(session.status.time, 2);
});

test("an answered watch is sent again, with a new id, on the next connection; a stop is not", () => {
  const session = connected();
  const key = session.watch({ type: "watch", id: session.nextId(), jobs: null, interval: 1, token: "t" });
  assert.deepEqual(session.takeOutbox().map((m) => m.type), ["watch"]);
  session.receive({ type: "reply", id: key, data: { interval: 1, jobs: null } });
  assert.equal(session.answer(key).type, "reply");
  session.disconnected();
  session.welcome(WELCOME);
  const again = session.takeOutbox();
  assert.equal(again.length, 1);
  assert.equal(again[0].type, "watch");
  assert.equal(again[0].token, "t");
  assert.notEqual(again[0].id, key);
  session.receive({ type: "reply", id: again[0].id, data: {} }); // no one waits: dropped
  assert.equal(session.pending.size, 0);

  session.watch({ type: "watch", id: session.nextId(), jobs: null, interval: 0 });
  assert.equal(session.watching, null);
});

test("a watch not answered before the connection dropped is sent once, not twice", () => {
  const session = connected();
  session.watch({ type: "watch", id: session.nextId(), jobs: ["j"], interval: 2 });
  session.disconnected();
  session.welcome(WELCOME);
  assert.deepEqual(session.takeOutbox().map((m) => m.type), ["watch"]);
});

test("watch() yields status frames of a real server, also as events, and stops when the loop breaks", { skip }, async () => {
  const client = new PlanchetClient(URL_, { token: MASTER });
  const job = jobName("watch");
  const input = writeInput(`${job}.in.jsonl`, [{ n: 1 }, { n: 2 }]);
  await client.startJob(job, { input_file_path: input, output_file_path: `${job}.out.jsonl` }, { token: "admin" });
  let events = 0;
  client.addEventListener("status", () => { events += 1; });
  try {
    const seen = [];
    for await (const status of client.watch({ jobs: [job], interval: 0.25, token: "admin" })) {
      seen.push(status);
      if (seen.length === 2) break;
    }
    assert.deepEqual(seen.map((s) => s.jobs.map((j) => j.job)), [[job], [job]]);
    assert.equal(seen[0].jobs[0].read >= 0, true);
    assert.deepEqual(seen[0].jobs[0].workers, []); // the admin token may see them
    assert.equal(client.state.watching, null);
    assert.equal(events >= 2, true);
    await assert.rejects(client.watch({ interval: 0 }).next(), RangeError);
  } finally {
    await client.delete(job).catch(() => {});
    await client.close();
  }
});
