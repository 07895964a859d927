// Types of planchet-client (the modules are plain JavaScript with JSDoc).

export const VERSION: string;
export const DONE: "done";
export const DEFAULT_URL: string;
/** 4 MiB − 64 KiB: under the 4 MiB message cap of Node's built-in WebSocket (undici). */
export const DEFAULT_MAX_BATCH_BYTES: number;
export const FINAL_CLOSE_CODES: Set<number>;

export function websocketUrl(url: string): string;
export function backoff(failures: number, base?: number, cap?: number): number;

/** A JSON value as it travels. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface ItemErrorLike {
  id: number;
  message: string;
  /** true (default): requeue while attempts are left; false: to the error file now. */
  retry?: boolean;
}

export interface Ack {
  type: "ack";
  job: string;
  lease: string | null;
  written: number;
  retried: number;
  failed: number;
  dropped: number;
}

export interface BatchFrame {
  type: "batch";
  job: string;
  lease: string;
  items: [number, any][];
  lease_timeout: number;
  /** Bytes of the frame as received (0 when it was given as an object). */
  bytes: number;
  /** When it came (ms, the clock given to `receive`). */
  received: number;
}

export class PlanchetError extends Error {
  constructor(message: string, options?: { code?: string; retryAfter?: number | null; final?: boolean });
  /** The server's error code, or the client's own: connection_lost, protocol_error,
   * job_deleted, session_taken. */
  code: string;
  retryAfter: number | null;
  /** Reconnecting cannot help. */
  final: boolean;
}

export function splitResult<R extends { items: [number, any][]; errors: ItemErrorLike[] }>(result: R, maxBytes: number): R[];

/** The protocol state with no I/O (see session.js). */
export class ClientSession {
  constructor(options?: { token?: string | null; resumable?: boolean; session?: string | null; client?: string });
  token: string | null;
  resumable: boolean;
  sessionId: string | null;
  parked: boolean;
  connected: boolean;
  failures: number;
  retryAfter: number | null;
  maxMessageBytes: number;
  resumeGrace: number;
  server: string;
  outbox: Record<string, any>[];
  hello(): Record<string, any>;
  resumeLeases(): string[];
  nextDelay(retries: number, hint?: number): number | null;
  nextId(): number;
  welcome(frame: unknown): { resumed: boolean; session: string | null };
  disconnected(): void;
  fail(error: PlanchetError): void;
  request(message: Record<string, any>): number;
  release(message: Record<string, any>): number;
  result(message: Record<string, any>): number;
  credit(message: Record<string, any>): void;
  uncredit(job: string): void;
  abandon(key: number): void;
  /** The watch kept up across connections (null: none). */
  watching: Record<string, any> | null;
  /** The newest status frame, and how many came so far. */
  status: StatusFrame | null;
  statuses: number;
  watch(message: Record<string, any>): number;
  takeOutbox(): Record<string, any>[];
  receive(frame: unknown, now?: number): Record<string, any> | null;
  hasAnswer(key: number): boolean;
  answer(key: number): Record<string, any> | undefined;
  hasBatch(job: string): boolean;
  takeBatch(job: string): BatchFrame | "done" | null;
  holds(job: string, lease: string, item: number): boolean;
  heldLeases(job: string): { lease: string; received: number; leaseTimeout: number }[];
}

export interface ClientOptions {
  /** Default token of the connection (hello), and of every request that names none. */
  token?: string | null;
  /** Failed connection attempts in a row before giving up (default 8). */
  retries?: number;
  /** Ask the server to keep this session's leases through a blip. */
  resumable?: boolean;
  /** A session id to resume (implies resumable). */
  session?: string | null;
  /** A WebSocket class (default: the global one, else the `ws` package). */
  WebSocket?: any;
  /** The client name sent in hello. */
  client?: string;
}

export interface StartJobOptions {
  reader?: "JsonlReader" | "CsvReader" | null;
  writer?: "JsonlWriter" | "CsvWriter" | null;
  mode?: "read-write" | "read" | "write";
  batchSize?: number;
  leaseTimeout?: number;
  batchSeconds?: number | null;
  maxAttempts?: number;
  cleanStart?: boolean;
  token?: string | null;
}

export interface BatchOptions {
  /** Batches in flight at once (credit window, default 2). */
  prefetch?: number;
  batchSize?: number | null;
  /** Largest batch frame the server may push (default 4 MiB − 64 KiB; null: no cap). */
  maxBatchBytes?: number | null;
  token?: string | null;
}

export type Report = Record<string, any>;

/** A worker of a job, as a status frame shows it. */
export interface WorkerStatus {
  /** A short id of the session (not the resumable session id). */
  id: string;
  kind: "blocking" | "asyncio" | "work" | "browser" | "node" | "other";
  /** The client's name from its hello. */
  client: string | null;
  address: string | null;
  /** Items it settled per second, recently. */
  rate: number;
  done: number;
  failed: number;
  leases: number;
  in_flight: number;
  /** Seconds since its last frame. */
  last_seen: number;
}

/** A job in a status frame: its report, its workers, its last errors, its rate history. */
export interface JobStatus extends Report {
  job: string;
  state: "running" | "paused" | "done";
  read: number;
  written: number;
  failed: number;
  in_flight: number;
  queued: number;
  rate: number;
  eta_seconds: number | null;
  /** Why the job is broken, else null. */
  error: string | null;
  /** null unless the watch's token may administer the job. */
  workers: WorkerStatus[] | null;
  /** The last 10 lines of the error file, newest last; null as for workers. */
  errors: { id: number; error: string; attempts: number }[] | null;
  /** [Unix seconds, items/s], one point per 5 s over the last 10 minutes. */
  history: [number, number][];
}

export interface StatusFrame {
  type: "status";
  /** Unix seconds. */
  time: number;
  server: { version: string; connections: number; workers: number; redis: string; [key: string]: any };
  jobs: JobStatus[];
}

export interface WatchOptions {
  /** The jobs to watch (default null: every job). */
  jobs?: string[] | null;
  /** Seconds between status frames, 0.25 to 60 (default 1). */
  interval?: number;
  /** Shows each job's workers and errors when it may administer the job. */
  token?: string | null;
}

export class WorkBatch {
  client: PlanchetClient;
  job: string;
  lease: string;
  items: [number, any][];
  leaseTimeout: number;
  bytes: number;
  readonly ids: number[];
  readonly values: any[];
  ack(results: [number, Json][], errors?: ItemErrorLike[]): Promise<Ack>;
  release(ids?: number[] | null): Promise<{ lease: string; released: number; dropped: number }>;
  extend(seconds?: number | null): Promise<{ lease: string; held: boolean; lease_timeout: number | null }>;
}

export class PlanchetClient extends EventTarget {
  constructor(url?: string, options?: ClientOptions);
  url: string;
  token: string | null;
  retries: number;
  readonly session: string | null;
  readonly connected: boolean;
  readonly state: ClientSession;
  connect(): Promise<void>;
  close(code?: number, reason?: string): Promise<void>;
  request(message: Record<string, any>): Promise<any>;
  startJob(job: string, metadata: Record<string, any>, options?: StartJobOptions): Promise<Report>;
  report(job: string, options?: { token?: string | null }): Promise<Report>;
  pause(job: string, options?: { token?: string | null }): Promise<Report>;
  resume(job: string, options?: { token?: string | null }): Promise<Report>;
  delete(job: string, options?: { token?: string | null }): Promise<{ deleted: string }>;
  clean(job: string, options?: { token?: string | null }): Promise<Report>;
  /** Put the items of the job's error file back in the queue; the file is rotated. */
  retry(job: string, options?: { token?: string | null }): Promise<Report & { retried: number; rotated_to: string | null }>;
  /** Status frames until the loop breaks or the client closes; one watch per client. */
  watch(options?: WatchOptions): AsyncGenerator<StatusFrame, void, void>;
  jobs(options?: { token?: string | null }): Promise<Report[]>;
  grantToken(jobs: string[], options?: { label?: string | null; token?: string | null }): Promise<{ key: string; token: string; jobs: string[]; label: string | null; created: number }>;
  workerTokens(job?: string | null, options?: { token?: string | null }): Promise<{ key: string; jobs: string[]; label: string | null; created: number }[]>;
  revokeToken(key: string, options?: { token?: string | null }): Promise<{ revoked: string }>;
  release(job: string, lease: string, options?: { ids?: number[] | null; token?: string | null }): Promise<{ lease: string; released: number; dropped: number }>;
  extend(job: string, lease: string, options?: { seconds?: number | null; token?: string | null }): Promise<{ lease: string; held: boolean; lease_timeout: number | null }>;
  batches(job: string, options?: BatchOptions): AsyncGenerator<WorkBatch, void, void>;
  setPrefetch(job: string, prefetch: number): void;
  sendResults(job: string, lease: string | null, results: [number, Json][], errors?: ItemErrorLike[], options?: { token?: string | null }): Promise<Ack>;
}

export class ItemFailure {
  constructor(message: string, retry?: boolean);
  message: string;
  retry: boolean;
}

export type Handler = (items: any[], context: { ids: number[]; lease: string; job: string }) => unknown[] | Promise<unknown[]>;

export interface WorkerOptions {
  job: string;
  /** A worker token (or the job's admin token). */
  token?: string | null;
  prefetch?: number;
  batchSize?: number | null;
  maxBatchBytes?: number | null;
  /** Keep leases through a blip (default true). */
  resumable?: boolean;
  /** A session id to resume, e.g. from sessionStorage after a reload. */
  session?: string | null;
  /** Failed connection attempts in a row before giving up (default 60). */
  retries?: number;
  WebSocket?: any;
}

export interface Progress {
  /** Results written. */
  done: number;
  /** Items failed for good (in the error file). */
  failed: number;
  /** Items failed and requeued for another attempt. */
  retried: number;
  /** Results the server dropped (a lost lease). */
  dropped: number;
  batches: number;
  /** Items settled per second over the last 30 s. */
  rate: number;
}

export type WorkerState = "idle" | "connecting" | "working" | "waiting" | "done" | "stopped";

export interface WorkerEventMap {
  progress: CustomEvent<Progress>;
  error: CustomEvent<{ error: unknown; fatal: boolean; job?: string; lease?: string }>;
  state: CustomEvent<{ state: WorkerState }>;
  batch: CustomEvent<{ job: string; lease: string; size: number; bytes: number; leaseTimeout: number }>;
  session: CustomEvent<{ session: string | null; resumed: boolean }>;
}

export class PlanchetWorker extends EventTarget {
  constructor(url: string, options: WorkerOptions);
  static fail(message: unknown, options?: { retry?: boolean }): ItemFailure;
  url: string;
  job: string;
  client: PlanchetClient | null;
  state: WorkerState;
  progress: Progress;
  readonly session: string | null;
  run(handler: Handler): Promise<Progress & { reason: "done" | "deleted" | "stopped" }>;
  stop(): Promise<void>;
  addEventListener<K extends keyof WorkerEventMap>(type: K, listener: (event: WorkerEventMap[K]) => void, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}
