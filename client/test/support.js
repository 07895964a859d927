// Helpers of the integration tests: the server under test comes from the environment.
//
//   PLANCHET_URL       ws:// URL of a running Planchet server (unset: integration tests skip)
//   PLANCHET_DATA_DIR  that server's data directory, where the tests write inputs and read outputs
//   PLANCHET_TOKEN     the server's master token, if it has one
//
// tests/test_js_client.py starts a server and sets these.

import { readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";

export const URL_ = process.env.PLANCHET_URL ?? "";
export const DATA_DIR = process.env.PLANCHET_DATA_DIR ?? "";
export const MASTER = process.env.PLANCHET_TOKEN || null;
export const skip = URL_ && DATA_DIR ? false : "PLANCHET_URL and PLANCHET_DATA_DIR are not set";

let counter = 0;
/** A job name of its own for each test of this process. @param {string} what */
export const jobName = (what) => `js-${what}-${process.pid}-${++counter}`;

/** Write `records` as JSONL into the data dir; the file's name. @param {string} name @param {unknown[]} records */
export function writeInput(name, records) {
  writeFileSync(path.join(DATA_DIR, name), records.map((r) => JSON.stringify(r) + "\n").join(""));
  return name;
}

/** The JSONL lines of a file in the data dir. @param {string} name */
export function readLines(name) {
  const text = readFileSync(path.join(DATA_DIR, name), "utf8");
  return text.split("\n").filter((line) => line !== "").map((line) => JSON.parse(line));
}

/** Poll `check` until it returns something truthy; fail after `timeout` ms. */
export async function eventually(check, what, timeout = 30000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A TCP proxy to the server under test that can drop every connection at once (the
 * client then sees a close 1006, as after a network blip or a crash). */
export class Proxy {
  constructor() {
    const target = new URL(URL_.replace(/^ws/, "http"));
    this.sockets = new Set();
    this.connections = 0;
    this.server = net.createServer((down) => {
      this.connections += 1;
      const up = net.connect(Number(target.port), target.hostname);
      for (const [a, b] of [[down, up], [up, down]]) {
        this.sockets.add(a);
        a.on("error", () => b.destroy());
        a.on("close", () => { this.sockets.delete(a); b.destroy(); });
        a.pipe(b);
      }
    });
  }

  /** Listen on a free port; the ws:// URL to give a client. */
  async start() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return `ws://127.0.0.1:${this.server.address().port}/`;
  }

  /** Cut every connection with no close frame. */
  drop() {
    for (const socket of this.sockets) socket.destroy();
  }

  async stop() {
    this.drop();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
