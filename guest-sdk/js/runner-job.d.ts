// TypeScript declarations of the JavaScript SDK (runner-job.js, which documents each).
// `import { job } from "runner-job"` in a job built with build-job.mjs.

/** What a job function returns: all the work is done (exit 0), or it stopped early
 * with its state saved (exit 75; the next run resumes). Returning nothing = done. */
export type Outcome = "completed" | "suspended";
export const COMPLETED: "completed";
export const SUSPENDED: "suspended";

/** Why the runner asked the job to stop. */
export type StopReason = "terminate" | "interrupt" | "hangup" | "timeout" | "fenced";

/** Inside `[...]` of a regular expression with the `u` flag: Unicode's letters and
 * numbers, what `\p{L}\p{N}` would match (the job's engine has no `\p{...}`). */
export const LETTER_OR_NUMBER: string;
/** The Unicode version of `LETTER_OR_NUMBER`. */
export const UNICODE_VERSION: string;
/** `text` in lower case with Unicode's final sigma rule, which the engine's
 * `toLowerCase` misses. */
export function lowerCase(text: string): string;
/** Compares strings by code point (as Rust and Python order them). */
export function compareCodePoints(a: string, b: string): number;

/** Thrown by a batch when the runner asked the job to stop, after it saved the state;
 * let it through. */
export class Stopped extends Error {
  constructor();
}

/** A checkpoint was not saved; the state saved before is still the current one. */
export type CheckpointErrorKind = "too-large" | "fenced" | "io" | "in-batch" | "encoding";
export class CheckpointError extends Error {
  constructor(kind: CheckpointErrorKind, message: string);
  readonly kind: CheckpointErrorKind;
}

export function shutdownRequested(): boolean;
export function stopReason(): StopReason | undefined;
/** Milliseconds on the `performance.now()` clock. */
export function deadline(): number | undefined;
export function waitForShutdown(): void;
/** A `wasi:io/poll` pollable, ready once the runner asks the job to stop. */
export function shutdownPollable(): unknown;
/** The index of a ready pollable, or `undefined` for the stop request. */
export function waitFor(pollables: unknown[]): number | undefined;
/** `true` if it slept the whole time, `false` if a stop request woke it. */
export function sleep(seconds: number): boolean;
export function waitUntil(ready: () => boolean, interval: number): boolean;
export function reportProgress(done: number, total?: number): void;
/** Ends the job at once with `code` (0 to 255); nothing is saved (with 0, the outputs'
 * pending writes are written first). */
export function exit(code: number): never;
/** The job's arguments, the first being the job file's name. */
export function args(): string[];
/** The job's environment variables. */
export function env(): Record<string, string>;

export type FileType =
  | "unknown"
  | "block-device"
  | "character-device"
  | "directory"
  | "fifo"
  | "symbolic-link"
  | "regular-file"
  | "socket";
export function stat(path: string, options?: { followLinks?: boolean }): { type: FileType; size: number };
export function readDir(path: string): { name: string; type: FileType }[];
/** Every regular file under `path`, recursively, sorted; links are not followed. */
export function listFiles(path: string): string[];
export function readFile(path: string): Uint8Array;
export function readTextFile(path: string): string;
export function writeFile(path: string, data: string | Uint8Array): void;

/** The numbers `start` (included) to `end` (excluded); `range(end)` starts at 0. */
export interface Range extends Iterable<number> {
  readonly start: number;
  readonly end: number;
}
export function range(end: number): Range;
export function range(start: number, end: number): Range;

/** The lines of files, one after the other, without their line endings. */
export class Lines {
  constructor(paths: Iterable<string>);
  readonly paths: string[];
}

/** A file in the output directory, written before each save. */
export interface Output {
  readonly path: string;
  write(data: string | Uint8Array): void;
  flush(): void;
  close(): void;
}

export interface BatchOptions {
  /** Seconds between saves (5 by default). */
  saveEvery?: number;
  /** Also save every so many items. */
  saveEveryItems?: number;
}

export class Ctx<S = Record<string, any>> {
  /** The SDK makes it: a job gets it as its function's argument. */
  private constructor();
  /** The state loaded from the last checkpoint, or the first run's. */
  state: S;
  /** Whether this run resumes from a checkpoint. */
  readonly resumed: boolean;
  output(path: string): Output;
  shouldStop(): boolean;
  deadline(): number | undefined;
  progress(done: number, total?: number): void;
  checkpoint(): void;
  checkpointEvery(seconds: number): boolean;
  suspend(): "suspended";
  batch(items: Range, options?: BatchOptions): Iterable<number>;
  batch(items: Lines, options?: BatchOptions): Iterable<string>;
  batch<T>(items: Iterable<T>, options?: BatchOptions): Iterable<T>;
}

/** The job's `run` export: `export const run = job((ctx) => { ... })`. */
export function job<S = Record<string, any>>(
  fn: (ctx: Ctx<S>) => Outcome | void,
  options?: { state?: () => S },
): () => Outcome;
