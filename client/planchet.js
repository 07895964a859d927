// Planchet's JavaScript client, the entry module (served by the server at /client.js).
//
//   import { PlanchetWorker } from "/client.js";
//   const worker = new PlanchetWorker("ws://127.0.0.1:5005/", { job: "headlines", token });
//   await worker.run(async (items) => items.map((item) => item.text.length));
//
// session.js: the protocol state, no I/O. client.js: PlanchetClient over a WebSocket.
// worker.js: PlanchetWorker, a whole worker in one call.

export { ClientSession, DONE, PlanchetError, VERSION, backoff, splitResult } from "./session.js";
export { DEFAULT_MAX_BATCH_BYTES, DEFAULT_URL, FINAL_CLOSE_CODES, PlanchetClient, WorkBatch, websocketUrl } from "./client.js";
export { ItemFailure, PlanchetWorker } from "./worker.js";
