// Write batch jobs for `runner` in JavaScript or TypeScript: they stop cleanly when
// asked and resume where they stopped.
//
// A job is one function given to `job`, whose result the job's module exports as `run`.
// It gets a `Ctx` whose `state` was loaded from the last checkpoint (or is new on a
// first run). The shortest resumable job walks its work with `ctx.batch`, which keeps
// its place in the checkpoint, saves every few seconds, and ends the run with the state
// saved when the runner asks the job to stop:
//
//     import { job, range } from "runner-job";
//
//     export const run = job((ctx) => {
//       for (const n of ctx.batch(range(1_000_000))) {
//         ctx.state.total = (ctx.state.total ?? 0) + n;
//       }
//       console.log(ctx.state.total);
//     });
//
// Build it into a component with `node guest-sdk/js/build-job.mjs count.js -o count.wasm`
// and run it with `runner count.wasm`.
//
// The state is saved as JSON, as the object `{"state": STATE, "batches": [CURSOR, ...],
// "job": "js:NAME"}` (the layout of the Rust and Python SDKs; NAME is the job file's
// name without its extension, and a checkpoint another job saved is refused).
//
// The module is evaluated when the job is built (componentize-js snapshots it): nothing
// here may ask the host anything before the job runs.

import * as lifecycle from "runner:job/lifecycle@0.1.0";
import { load as loadCheckpoint, save as saveCheckpoint } from "runner:job/checkpoint@0.1.0";
import { report } from "runner:job/progress@0.1.0";
import { now, subscribeDuration } from "wasi:clocks/monotonic-clock@0.2.12";
import { poll } from "wasi:io/poll@0.2.12";
import { getArguments, getEnvironment } from "wasi:cli/environment@0.2.12";
import { exitWithCode } from "wasi:cli/exit@0.2.12";
import { getDirectories } from "wasi:filesystem/preopens@0.2.12";
import { CASED, CASE_IGNORABLE, LETTERS_AND_NUMBERS, UNICODE_VERSION } from "./unicode.js";

/** Return it from a job when all the work is done: the runner exits 0. Returning
 * nothing means the same. */
export const COMPLETED = "completed";
/** Return it when the job stopped early with its state saved (`ctx.suspend()` does
 * both): the runner exits 75 and the next run resumes. */
export const SUSPENDED = "suspended";

const DEFAULT_SAVE_EVERY = 5;
// A batch looks at the clock and the shutdown flag (host calls) about once a
// millisecond, counting items between looks; MAX_STRIDE bounds how late a request is
// seen when the items turn slow all at once (the count shrinks at the next look).
const LOOK_EVERY = 0.001;
const MAX_STRIDE = 1 << 10;
// How much of a file a read asks for.
const READ_CHUNK = 64 * 1024;
// The most one blocking write may carry (wasi:io's streams promise 4096 bytes).
const WRITE_CHUNK = 4096;
// How much an output keeps before it writes.
const OUTPUT_BUFFER = 64 * 1024;

// The name of the module the build command bundles the job into, as stacks name it.
const BUNDLE = "job.js";
// The job's name in its checkpoints; the build command defines RUNNER_JOB_NAME.
const JOB_NAME =
  // eslint-disable-next-line no-undef
  typeof RUNNER_JOB_NAME === "string" ? RUNNER_JOB_NAME : "job";

/** The ranges of a table of unicode.js as what goes between the brackets of a regular
 * expression with the `u` flag. */
function rangesClass(table) {
  return table
    .split(",")
    .map((range) => {
      const [start, length = 0] = range.split("-").map((n) => parseInt(n, 36));
      const first = `\\u{${start.toString(16)}}`;
      return length === 0 ? first : `${first}-\\u{${(start + length).toString(16)}}`;
    })
    .join("");
}

/** Inside the brackets of a regular expression with the `u` flag, what `\p{L}\p{N}`
 * would match: Unicode's letters and numbers (`new RegExp(`[${LETTER_OR_NUMBER}]+`,
 * "gu")` matches words as the Rust and Python SDKs' examples split them). The job's
 * engine (SpiderMonkey without ICU) has no `\p{...}`: a regular expression with one is a
 * syntax error when the job is built. */
export const LETTER_OR_NUMBER = rangesClass(LETTERS_AND_NUMBERS);
/** The Unicode version of `LETTER_OR_NUMBER`. */
export { UNICODE_VERSION };

/** `text` in lower case, as `toLowerCase` should give it: the job's engine (without
 * ICU) lower-cases each character alone, so a capital sigma at the end of a word becomes
 * "σ" where Unicode (and Rust's `to_lowercase`, Python's `lower`) say "ς". This applies
 * Unicode's Final_Sigma rule. */
export function lowerCase(text) {
  const lower = text.toLowerCase();
  if (!text.includes("\u03a3")) {
    return lower;
  }
  const chars = [...text];
  return chars
    .map((char, i) => (char === "\u03a3" && isFinalSigma(chars, i) ? "\u03c2" : char.toLowerCase()))
    .join("");
}

const IS_CASED = new RegExp(`^[${rangesClass(CASED)}]$`, "u");
const IS_CASE_IGNORABLE = new RegExp(`^[${rangesClass(CASE_IGNORABLE)}]$`, "u");

/** Whether the sigma at `chars[i]` follows a cased letter and precedes none (skipping
 * case-ignorable characters both ways). */
function isFinalSigma(chars, i) {
  const nearest = (from, step) => {
    for (let j = from; j >= 0 && j < chars.length; j += step) {
      if (!IS_CASE_IGNORABLE.test(chars[j])) {
        return IS_CASED.test(chars[j]);
      }
    }
    return false;
  };
  return nearest(i - 1, -1) && !nearest(i + 1, 1);
}

/** Thrown by a batch when the runner asked the job to stop, after it saved the state.
 * Let it through (`if (e instanceof Stopped) throw e;` in a `catch` around a batch
 * loop): the SDK catches it and ends the run as suspended. */
export class Stopped extends Error {
  constructor() {
    super("the runner asked the job to stop; the state is saved");
    this.name = "Stopped";
  }
}

/** A checkpoint was not saved; the state saved before is still the current one.
 * `kind` is "too-large", "fenced", "io", "in-batch" or "encoding" (the state is not
 * JSON that loads back the same). */
export class CheckpointError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = "CheckpointError";
    this.kind = kind;
  }
}

/** True once the runner has asked the job to stop. Cheap: it reads a flag. */
export function shutdownRequested() {
  return lifecycle.shutdownRequested();
}

/** Why the runner asked the job to stop: "terminate", "interrupt", "hangup",
 * "timeout" or "fenced"; `undefined` before it has. */
export function stopReason() {
  return lifecycle.shutdownReason();
}

/** When the runner will stop the job by force, in milliseconds on the
 * `performance.now()` clock, once it has asked the job to stop; `undefined` before. */
export function deadline() {
  const instant = lifecycle.deadline();
  if (instant === undefined) {
    return undefined;
  }
  const at = now();
  return performance.now() + Number(instant > at ? instant - at : 0n) / 1e6;
}

/** Blocks until the runner asks the job to stop. */
export function waitForShutdown() {
  const stop = lifecycle.subscribeShutdown();
  stop.block();
  drop(stop);
}

/** A pollable that becomes ready when the runner asks the job to stop, and stays
 * ready: for a job that polls its own pollables (`wasi:io/poll`) itself. `waitFor`
 * does that for you. */
export function shutdownPollable() {
  return lifecycle.subscribeShutdown();
}

/** Waits until one of the job's own `pollables` is ready (a stream, a timer), or the
 * runner asks the job to stop, whichever comes first: the index of a ready pollable,
 * or `undefined` for the stop request (which wins when both are ready). */
export function waitFor(pollables) {
  const stop = lifecycle.subscribeShutdown();
  const ready = poll([...pollables, stop]);
  drop(stop);
  if (shutdownRequested()) {
    return undefined;
  }
  return ready.find((index) => index < pollables.length);
}

/** Sleeps for `seconds`, or less if the runner asks the job to stop meanwhile. Returns
 * `true` if it slept the whole time, `false` if a stop request woke it. */
export function sleep(seconds) {
  const timer = subscribeDuration(BigInt(Math.max(0, Math.round(seconds * 1e9))));
  const stop = lifecycle.subscribeShutdown();
  poll([timer, stop]);
  drop(timer);
  drop(stop);
  return !shutdownRequested();
}

/** Waits until `ready()` is true, asking it every `interval` seconds, and returns
 * `true`; or returns `false` as soon as the runner asks the job to stop. */
export function waitUntil(ready, interval) {
  for (;;) {
    if (shutdownRequested()) {
      return false;
    }
    if (ready()) {
      return true;
    }
    if (!sleep(interval)) {
      return false;
    }
  }
}

/** Reports `done` units of work out of `total`, if known. The runner shows the latest
 * report from time to time and when the job stops. */
export function reportProgress(done, total) {
  report(BigInt(Math.max(0, Math.floor(done))), total == null ? undefined : BigInt(Math.max(0, Math.floor(total))));
}

/** Ends the job at once; the runner exits with `code` (0 to 255). Nothing is saved; with
 * 0, the outputs' pending writes are written first. */
export function exit(code) {
  if (!Number.isInteger(code) || code < 0 || code > 255) {
    throw new RangeError(`exit(${code}): the code is a whole number from 0 to 255`);
  }
  if (code === 0) {
    // What the job wrote is its result; nothing is saved.
    flushOutputs();
  }
  exitWithCode(code);
}

/** The job's arguments, the first being the job file's name (as `sys.argv` in Python). */
export function args() {
  return getArguments();
}

/** The job's environment variables (`runner --env`), as an object. */
export function env() {
  return Object.fromEntries(getEnvironment());
}

function drop(resource) {
  resource[Symbol.dispose]?.();
}

function monotonicSeconds() {
  return Number(now()) / 1e9;
}

// ---------------------------------------------------------------------------------
// Files. The job sees the directories the runner preopens (`--dir`, `--output`); a
// path is resolved against the preopen it starts with, as wasi-libc does for Rust and
// Python jobs.

function components(path) {
  return path.split("/").filter((part) => part !== "" && part !== ".");
}

/** The preopened directories, asked for once (each call makes new handles), when the
 * job first uses a path. */
let preopens;

/** The preopened directory `path` is in, and the path inside it. The working directory
 * is `/`, as for wasi-libc: `input/a.txt` is `/input/a.txt`. */
function resolve(path) {
  const text = String(path);
  const parts = components(text);
  let best;
  preopens ??= getDirectories();
  for (const [descriptor, name] of preopens) {
    const prefix = components(name);
    if (prefix.length > parts.length) {
      continue;
    }
    if (prefix.every((part, i) => parts[i] === part) && (!best || prefix.length > best.length)) {
      best = { descriptor, length: prefix.length };
    }
  }
  if (!best) {
    throw fsError(text, "no directory given to the job holds it (did you pass --dir?)");
  }
  return [best.descriptor, parts.slice(best.length).join("/") || "."];
}

function fsError(path, message) {
  const error = new Error(`${path}: ${message}`);
  error.path = path;
  return error;
}

/** Calls `action`, turning a wasi:filesystem error code into an Error naming `path`. */
function withPath(path, action) {
  try {
    return action();
  } catch (error) {
    const code = error?.payload ?? (typeof error === "string" ? error : undefined);
    if (typeof code === "string") {
      throw fsError(path, code.replace(/-/g, " "));
    }
    throw error;
  }
}

function openFile(path, openFlags, descriptorFlags) {
  const [dir, inside] = resolve(path);
  return withPath(path, () => dir.openAt({ symlinkFollow: true }, inside, openFlags, descriptorFlags));
}

/** `path`'s type ("regular-file", "directory", "symbolic-link", ...) and size in bytes,
 * following a symbolic link unless `followLinks` is false. */
export function stat(path, { followLinks = true } = {}) {
  const [dir, inside] = resolve(path);
  const found = withPath(path, () => dir.statAt({ symlinkFollow: followLinks }, inside));
  return { type: found.type, size: Number(found.size) };
}

/** The entries of the directory `path`: `{ name, type }`, in no particular order. */
export function readDir(path) {
  const dir = openFile(path, { directory: true }, { read: true });
  const entries = [];
  let stream;
  try {
    stream = withPath(path, () => dir.readDirectory());
    for (;;) {
      const entry = withPath(path, () => stream.readDirectoryEntry());
      if (entry === undefined) {
        break;
      }
      entries.push(entry);
    }
  } finally {
    if (stream) {
      drop(stream);
    }
    drop(dir);
  }
  return entries;
}

/** Every regular file under the directory `path`, recursively, sorted by name;
 * symbolic links are not followed. */
export function listFiles(path) {
  const files = [];
  const dirs = [String(path).replace(/\/+$/, "") || "/"];
  while (dirs.length > 0) {
    const dir = dirs.pop();
    for (const { name, type } of readDir(dir)) {
      const full = dir === "/" ? `/${name}` : `${dir}/${name}`;
      if (type === "directory") {
        dirs.push(full);
      } else if (type === "regular-file") {
        files.push(full);
      }
    }
  }
  return files.sort(compareCodePoints);
}

/** Compares strings by code point (as Rust and Python do), not by UTF-16 unit. */
export function compareCodePoints(a, b) {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x !== y) {
      // Surrogates (U+D800-DFFF) stand for code points above U+FFFF: move them above
      // U+E000-FFFF.
      if (x >= 0xd800 && y >= 0xd800) {
        x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
        y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
      }
      return x - y;
    }
  }
  return a.length - b.length;
}

/** The whole content of the file `path`. */
export function readFile(path) {
  const file = openFile(path, {}, { read: true });
  try {
    const chunks = [];
    let offset = 0n;
    for (;;) {
      const [data, end] = withPath(path, () => file.read(BigInt(READ_CHUNK), offset));
      chunks.push(data);
      offset += BigInt(data.length);
      if (end || data.length === 0) {
        break;
      }
    }
    return concat(chunks);
  } finally {
    drop(file);
  }
}

/** The content of the file `path` as text (UTF-8; bytes that are not become U+FFFD). */
export function readTextFile(path) {
  return new TextDecoder("utf-8", { ignoreBOM: true }).decode(readFile(path));
}

/** Replaces the content of the file `path` with `data` (a string is written as UTF-8),
 * creating it. Not for results in the output directory, which a resumed run finds cut
 * back to its checkpoint: append those through `ctx.output`. */
export function writeFile(path, data) {
  const file = openFile(path, { create: true, truncate: true }, { write: true });
  try {
    writeAll(path, file.writeViaStream(0n), bytes(data));
  } finally {
    drop(file);
  }
}

function bytes(data) {
  return typeof data === "string" ? new TextEncoder().encode(data) : data;
}

function concat(chunks) {
  if (chunks.length === 1) {
    return chunks[0];
  }
  const all = new Uint8Array(chunks.reduce((sum, chunk) => sum + chunk.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    all.set(chunk, at);
    at += chunk.length;
  }
  return all;
}

function writeAll(path, stream, data) {
  try {
    for (let at = 0; at < data.length; at += WRITE_CHUNK) {
      withStream(path, () => stream.blockingWriteAndFlush(data.subarray(at, at + WRITE_CHUNK)));
    }
    if (data.length === 0) {
      withStream(path, () => stream.blockingFlush());
    }
  } finally {
    drop(stream);
  }
}

function withStream(path, action) {
  try {
    return action();
  } catch (error) {
    const payload = error?.payload;
    if (payload?.tag === "closed") {
      throw fsError(path, "the stream is closed");
    }
    if (payload?.tag === "last-operation-failed") {
      throw fsError(path, payload.val.toDebugString());
    }
    throw error;
  }
}

/** A file in the output directory, opened by `ctx.output`: what `write` gives it is
 * written when 64 KiB are pending and before each save, so that each checkpoint records
 * what the job wrote before it (a resumed run finds the file cut back to its
 * checkpoint's length). */
class Output {
  constructor(path) {
    this.path = path;
    this.pending = [];
    this.pendingLength = 0;
    this.closed = false;
    const file = openFile(path, { create: true }, { write: true });
    try {
      this.stream = withPath(path, () => file.appendViaStream());
    } finally {
      drop(file);
    }
  }

  /** Appends `data` (text is written as UTF-8). */
  write(data) {
    if (this.closed) {
      throw fsError(this.path, "write to an output after close");
    }
    if (typeof data !== "string" && !(data instanceof Uint8Array)) {
      throw new TypeError(`${this.path}: write takes a string or a Uint8Array`);
    }
    this.pending.push(data);
    this.pendingLength += data.length;
    if (this.pendingLength >= OUTPUT_BUFFER) {
      this.flush();
    }
  }

  /** Writes what is pending now. What a failed write left stays pending. */
  flush() {
    if (this.pending.length === 0) {
      return;
    }
    const data = concat(this.pending.map(bytes));
    let at = 0;
    try {
      for (; at < data.length; at += WRITE_CHUNK) {
        withStream(this.path, () => this.stream.blockingWriteAndFlush(data.subarray(at, at + WRITE_CHUNK)));
      }
      this.pending = [];
      this.pendingLength = 0;
    } catch (error) {
      this.pending = [data.subarray(at)];
      this.pendingLength = data.length - at;
      throw new CheckpointError("io", `cannot write output \`${this.path}\`: ${error.message}`);
    }
  }

  /** Writes what is pending and closes the file. */
  close() {
    if (!this.closed) {
      this.flush();
      this.closed = true;
      outputs.delete(this);
      drop(this.stream);
    }
  }
}

/** Every output the job has open: flushed before each save. */
const outputs = new Set();
/** Whether the job opened one in this run: then a save records the output. */
let openedOutput = false;

function flushOutputs() {
  for (const output of outputs) {
    output.flush();
  }
}

function saveBytes(data) {
  flushOutputs();
  try {
    saveCheckpoint(data);
  } catch (error) {
    const payload = error?.payload;
    if (payload?.tag === "too-large") {
      throw new CheckpointError(
        "too-large",
        `checkpoint too large: the runner accepts at most ${payload.val} bytes`,
      );
    }
    if (payload?.tag === "fenced") {
      throw new CheckpointError("fenced", "checkpoint refused: another runner now owns this job");
    }
    if (payload?.tag === "io") {
      throw new CheckpointError("io", `checkpoint not saved: ${payload.val}`);
    }
    throw error;
  }
}

// ---------------------------------------------------------------------------------
// What a batch walks.

/** The numbers `start` (included) to `end` (excluded), for `ctx.batch`;
 * `range(end)` starts at 0. The cursor saved in the checkpoint is the next number. */
export function range(start, end) {
  if (end === undefined) {
    [start, end] = [0, start];
  }
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end)) {
    throw new RangeError(`range(${start}, ${end}): the bounds must be whole numbers`);
  }
  return new Range(start, Math.max(start, end));
}

class Range {
  constructor(start, end) {
    this.start = start;
    this.end = end;
  }

  *[Symbol.iterator]() {
    for (let n = this.start; n < this.end; n++) {
      yield n;
    }
  }
}

class Numbers {
  constructor(range) {
    this.start = range.start;
    this.end = range.end;
    this.next = range.start;
  }

  cursor() {
    return this.next;
  }

  seek(cursor) {
    if (!Number.isSafeInteger(cursor) || cursor < this.start || cursor > this.end) {
      throw new Error(
        `the checkpoint is at number ${JSON.stringify(cursor)}, outside this batch's ${this.start}..${this.end}`,
      );
    }
    this.next = cursor;
  }

  *items() {
    while (this.next < this.end) {
      yield this.next++;
    }
  }

  progress() {
    return [this.next - this.start, this.end - this.start];
  }
}

/** The lines of one or more files, one after the other, for `ctx.batch`. Each item is
 * a line without its line ending ("\n" or "\r\n"); bytes that are not UTF-8 become
 * U+FFFD. The cursor saved in the checkpoint is `{"file": INDEX, "offset": BYTES}`, as
 * in the Rust and Python SDKs. The files must not change between runs. */
export class Lines {
  constructor(paths) {
    this.paths = [...paths].map(String);
  }
}

class LineSource {
  constructor(lines) {
    this.paths = lines.paths;
    this.sizes = undefined;
    this.file = 0;
    this.offset = 0;
  }

  fileSizes() {
    this.sizes ??= this.paths.map((path) => stat(path).size);
    return this.sizes;
  }

  cursor() {
    return { file: this.file, offset: this.offset };
  }

  seek(cursor) {
    const sizes = this.fileSizes();
    const { file, offset } = cursor ?? {};
    const fits =
      Number.isSafeInteger(file) &&
      Number.isSafeInteger(offset) &&
      file >= 0 &&
      offset >= 0 &&
      (file < sizes.length ? offset <= sizes[file] : file === sizes.length && offset === 0);
    if (!fits) {
      throw new Error(
        `the checkpoint is at byte ${offset} of file ${file}, which these ${sizes.length} files do not have (did the input change?)`,
      );
    }
    this.file = file;
    this.offset = offset;
  }

  *items() {
    this.fileSizes();
    // A byte order mark stays, as in Rust and Python, wherever a read starts.
    const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
    while (this.file < this.paths.length) {
      const path = this.paths[this.file];
      const handle = openFile(path, {}, { read: true });
      try {
        // Bytes read but not yet given out as lines: `rest`, from `this.offset` on.
        let rest = new Uint8Array(0);
        let end = false;
        while (!end || rest.length > 0) {
          if (!end) {
            const [data, last] = withPath(path, () =>
              handle.read(BigInt(READ_CHUNK), BigInt(this.offset + rest.length)),
            );
            rest = concat([rest, data]);
            end = last || data.length === 0;
          }
          // The whole lines in `rest` (all of it at the end of the file), decoded at
          // once: a newline byte is never part of another character, so the text's
          // lines are the bytes' lines.
          const whole = end ? rest.length : rest.lastIndexOf(0x0a) + 1;
          if (whole === 0) {
            continue;
          }
          const lines = decoder.decode(rest.subarray(0, whole)).split("\n");
          let at = 0;
          for (const line of lines) {
            if (at === whole) {
              // What follows the last newline: "" (the next line starts in the next read).
              break;
            }
            const newline = rest.indexOf(0x0a, at);
            const next = newline < 0 || newline >= whole ? whole : newline + 1;
            this.offset += next - at;
            at = next;
            yield rest[next - 1] === 0x0a && line.endsWith("\r") ? line.slice(0, -1) : line;
          }
          rest = rest.subarray(whole);
        }
      } finally {
        drop(handle);
      }
      this.file += 1;
      this.offset = 0;
    }
  }

  progress() {
    const sizes = this.fileSizes();
    const before = sizes.slice(0, this.file).reduce((sum, size) => sum + size, 0);
    return [before + this.offset, sizes.reduce((sum, size) => sum + size, 0)];
  }
}

class Records {
  constructor(records) {
    this.total = Array.isArray(records) || ArrayBuffer.isView(records) ? records.length : undefined;
    this.records = records[Symbol.iterator]();
    this.walked = 0;
  }

  cursor() {
    return this.walked;
  }

  seek(cursor) {
    if (!Number.isSafeInteger(cursor) || cursor < 0) {
      throw new Error(`the checkpoint's place ${JSON.stringify(cursor)} is not a count of records`);
    }
    while (this.walked < cursor) {
      if (this.records.next().done) {
        throw new Error(
          `the checkpoint has walked ${cursor} records, but there are only ${this.walked} now (did the input change?)`,
        );
      }
      this.walked += 1;
    }
  }

  *items() {
    for (;;) {
      const next = this.records.next();
      if (next.done) {
        return;
      }
      this.walked += 1;
      yield next.value;
    }
  }

  progress() {
    return [this.walked, this.total];
  }
}

function source(items) {
  if (items instanceof Range) {
    return new Numbers(items);
  }
  if (items instanceof Lines) {
    return new LineSource(items);
  }
  if (items == null || typeof items[Symbol.iterator] !== "function") {
    throw new TypeError("a batch walks a range(), Lines or an iterable");
  }
  return new Records(items);
}

// ---------------------------------------------------------------------------------
// The state.

function isPlainObject(value) {
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/** Why `value` would not load back from JSON as it is (where in the state, and what it
 * is), or `undefined` if it would. Class instances are saved as their fields. */
function notJson(value, where) {
  switch (typeof value) {
    case "string":
    case "boolean":
      return undefined;
    case "number":
      return Number.isFinite(value) ? undefined : `${where} is ${value}`;
    case "object":
      break;
    default:
      return `${where} is a ${typeof value}`;
  }
  if (value === null) {
    return undefined;
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const why = value[i] === undefined ? `${where}[${i}] is undefined` : notJson(value[i], `${where}[${i}]`);
      if (why) {
        return why;
      }
    }
    return undefined;
  }
  if (!isPlainObject(value)) {
    const kind = value.constructor?.name;
    if (
      typeof value.toJSON === "function" ||
      value instanceof Map ||
      value instanceof Set ||
      value instanceof RegExp ||
      value instanceof Error ||
      ArrayBuffer.isView(value) ||
      value instanceof ArrayBuffer
    ) {
      return `${where} is a ${kind}`;
    }
  }
  for (const key of Object.keys(value)) {
    if (value[key] !== undefined) {
      const why = notJson(value[key], `${where}.${key}`);
      if (why) {
        return why;
      }
    }
  }
  return undefined;
}

/** A running job: its state, and the way to save it.
 *
 * `ctx.state` is the state loaded from the last checkpoint, or a new one on a first run
 * (an empty object, or what the job's `state` option makes). Change it freely; each
 * checkpoint saves it. */
export class Ctx {
  constructor(makeState, name) {
    // The job's name in its checkpoints: another job's checkpoint is refused.
    this.job = name;
    this.lastSave = monotonicSeconds();
    this.ended = [];
    this.open = false;
    this.stopped = false;
    this.saved = false;
    const raw = loadCheckpoint();
    /** Whether this run resumes from a checkpoint. */
    this.resumed = raw !== undefined;
    if (raw === undefined) {
      this.loaded = [];
      this.state = makeState ? makeState() : {};
      return;
    }
    let saved;
    try {
      saved = JSON.parse(new TextDecoder().decode(raw));
    } catch (error) {
      throw new Error(
        `the saved state does not fit this job's state (a job changed since it saved? start over with \`runner --start-over\`): ${error.message}`,
      );
    }
    const saver = saved !== null && typeof saved === "object" ? saved.job : undefined;
    if (saver !== undefined && saver !== name) {
      throw new Error(
        `the checkpoint was saved by another job (\`${saver}\`), not by this one (\`${name}\`): two jobs share one job id (by default, the job file's name). Give each its own --job-id, or pass --start-over to start this one from scratch`,
      );
    }
    if (saved === null || typeof saved !== "object" || !("state" in saved)) {
      throw new Error(
        "the saved state does not fit this job's state (a job changed since it saved? start over with `runner --start-over`): it has no `state`",
      );
    }
    this.loaded = Array.isArray(saved.batches) ? saved.batches : [];
    const state = saved.state;
    if (makeState && state !== null && typeof state === "object" && !Array.isArray(state)) {
      // The fields a newer version of the state added keep their first values.
      this.state = Object.assign(makeState(), state);
    } else {
      this.state = state;
    }
  }

  /** Opens `path`, a file in the job's output directory (`runner --output DIR`), for
   * appending results that end up there exactly once: what `write` gives it is written
   * before every save (a batch's own, `checkpoint`, `suspend`) and when the job
   * completes, so each checkpoint records what was written before it, and a resumed
   * run goes on where it left off. Text is written as UTF-8; parent directories are
   * created. */
  output(path) {
    const out = env().RUNNER_OUTPUT_DIR;
    if (!out) {
      throw new Error("the job has no output directory: run it with `runner --output DIR`");
    }
    const relative = String(path);
    const parts = relative.split("/");
    if (relative.startsWith("/") || parts.some((part) => part === "" || part === "." || part === "..")) {
      throw new Error(
        `output ${JSON.stringify(relative)} is not a path inside the output directory (use a relative path without '..')`,
      );
    }
    let dir = out;
    for (const part of parts.slice(0, -1)) {
      dir = `${dir}/${part}`;
      const [parent, inside] = resolve(dir);
      try {
        parent.createDirectoryAt(inside);
      } catch (error) {
        if (error?.payload !== "exist") {
          throw fsError(dir, String(error?.payload ?? error).replace(/-/g, " "));
        }
      }
    }
    const output = new Output(`${out}/${relative}`);
    outputs.add(output);
    openedOutput = true;
    return output;
  }

  /** True once the runner has asked the job to stop: save and return soon. */
  shouldStop() {
    return shutdownRequested();
  }

  /** See `deadline()`. */
  deadline() {
    return deadline();
  }

  /** Reports progress; `batch` reports for you. */
  progress(done, total) {
    reportProgress(done, total);
  }

  save(running, hasRunning = false) {
    // The batches this run has not reached keep their loaded places: the state holds
    // their work.
    const batches = hasRunning ? [...this.ended, running] : [...this.ended];
    batches.push(...this.loaded.slice(batches.length));
    const saved = { state: this.state, batches, job: this.job };
    let data;
    try {
      // First: it throws on a cycle, which would not end the walk below.
      data = JSON.stringify(saved);
    } catch (error) {
      throw new CheckpointError("encoding", `the state is not JSON: ${error.message}`);
    }
    const why = notJson(this.state, "state");
    if (why) {
      throw new CheckpointError(
        "encoding",
        `the state would not load back the same from JSON: ${why} (use plain objects, arrays, strings, finite numbers, booleans and null)`,
      );
    }
    saveBytes(new TextEncoder().encode(data));
    this.lastSave = monotonicSeconds();
    this.saved = true;
  }

  /** Saves the state now; durable when it returns. Inside a `batch` loop it throws
   * `CheckpointError` "in-batch": the batch saves, with its place. */
  checkpoint() {
    if (this.open) {
      throw new CheckpointError(
        "in-batch",
        "checkpoint inside a `ctx.batch` loop: the batch saves the state with its place in the items (set how often with `saveEvery`); checkpoint after the loop instead",
      );
    }
    this.save();
  }

  /** Saves if `seconds` have passed since the last save; returns whether it did. */
  checkpointEvery(seconds) {
    if (!this.open && monotonicSeconds() - this.lastSave < seconds) {
      return false;
    }
    this.checkpoint();
    return true;
  }

  /** Saves the state and returns `SUSPENDED`, for `return ctx.suspend()`. A job with
   * nothing to save (no checkpoint, no batch, an empty state) saves nothing. */
  suspend() {
    if (!this.nothingToSave()) {
      this.checkpoint();
    }
    return SUSPENDED;
  }

  nothingToSave() {
    const state = this.state;
    const empty =
      state === undefined ||
      state === null ||
      (typeof state === "object" && isPlainObject(state) && Object.keys(state).length === 0);
    return !this.resumed && !this.saved && !this.open && this.ended.length === 0 && !openedOutput && empty;
  }

  /** Walks `items` with its place kept in the checkpoint.
   *
   * `items` is a `range()` (the cursor is the next number), `Lines` of files, or any
   * other iterable (the cursor is how many items were walked; the next run skips that
   * many, so it must yield the same items in the same order).
   *
   * The batch saves the state with its place every `saveEvery` seconds (5 by default),
   * and also every `saveEveryItems` items if given, and reports progress. When the
   * runner asks the job to stop it saves between two items and throws `Stopped`, which
   * ends the run as suspended; the next run's batch starts at the first item whose loop
   * body had not finished. Batches run one at a time, in the same order on each run: a
   * batch takes its number in the checkpoint when its loop starts. A loop left with
   * `break` keeps its place at that item. */
  batch(items, { saveEvery = DEFAULT_SAVE_EVERY, saveEveryItems } = {}) {
    return this.walk(source(items), saveEvery, saveEveryItems);
  }

  *walk(source, saveEvery, saveEveryItems) {
    // A generator: this runs when the loop starts, so batches number themselves in the
    // order their loops run, whenever they were made.
    if (this.open) {
      throw new Error(
        "a batch started inside another batch: a job runs its batches one after another (flatten nested items into one source)",
      );
    }
    const number = this.ended.length;
    if (number < this.loaded.length) {
      try {
        source.seek(this.loaded[number]);
      } catch (error) {
        throw new Error(`cannot resume batch ${number} at ${JSON.stringify(this.loaded[number])}: ${error.message}`);
      }
    }
    this.open = true;
    let resumeAt = source.cursor();
    let sinceSave = 0;
    let stride = 1;
    let countdown = 1;
    let lastLook = monotonicSeconds();
    try {
      for (const item of source.items()) {
        countdown -= 1;
        if (countdown === 0) {
          const at = monotonicSeconds();
          const since = at - lastLook;
          lastLook = at;
          // Towards a look every LOOK_EVERY: at once when items turned slow, at most
          // twice as many items when they turned fast.
          const fitting = Math.floor((stride * LOOK_EVERY) / Math.max(since, 1e-9));
          stride = Math.max(1, Math.min(fitting, stride * 2, MAX_STRIDE));
          countdown = stride;
          reportProgress(...source.progress());
          if (shutdownRequested()) {
            this.save(resumeAt, true);
            this.stopped = true;
            throw new Stopped();
          }
          if (at - this.lastSave >= saveEvery) {
            this.save(resumeAt, true);
            sinceSave = 0;
          }
        }
        if (saveEveryItems != null && sinceSave >= saveEveryItems) {
          this.save(resumeAt, true);
          sinceSave = 0;
        }
        yield item;
        sinceSave += 1;
        resumeAt = source.cursor();
      }
      reportProgress(...source.progress());
    } finally {
      this.open = false;
      this.ended.push(resumeAt);
    }
  }
}

/** The message the runner prints for a failed run: the error, its stack and causes. */
function describe(error) {
  if (!(error instanceof Error)) {
    let text;
    try {
      text = typeof error === "string" ? error : (JSON.stringify(error) ?? String(error));
    } catch {
      text = String(error);
    }
    return `uncaught ${text}`;
  }
  let text = `${error.name}: ${error.message}`;
  for (const frame of String(error.stack ?? "").split("\n")) {
    // The frames below the job's (componentize-js's bindings) say nothing to its author.
    if (frame.trim() !== "" && !frame.includes("/initializer.js:")) {
      text += `\n    at ${sourcePlace(frame)}`;
    }
  }
  if (error.cause !== undefined) {
    text += `\nCaused by: ${describe(error.cause)}`;
  }
  return text;
}

/** A stack frame, `NAME@FILE:LINE:COLUMN`, with the bundle's place turned into the
 * place in the job's own file through the source map the build appended. */
function sourcePlace(frame) {
  const map = globalThis[Symbol.for("runner-job.source-map")];
  const place = /@(.*):(\d+):(\d+)$/.exec(frame);
  if (!map || !place || (place[1] !== BUNDLE && !place[1].endsWith(`/${BUNDLE}`))) {
    return frame;
  }
  const found = sourceAt(map, Number(place[2]) - 1, Number(place[3]) - 1);
  if (!found) {
    return frame;
  }
  const [source, line, column] = found;
  return `${frame.slice(0, place.index)}@${map.sources[source]}:${line + 1}:${column + 1}`;
}

const BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** The source, line and column (from 0) of a place in the generated code: the last
 * mapping at or before it on its line (source maps' base64 VLQ mappings). */
function sourceAt(map, line, column) {
  const lines = map.mappings.split(";");
  // The source fields are deltas across the whole map: decode up to `line`.
  let source = 0;
  let sourceLine = 0;
  let sourceColumn = 0;
  let found;
  for (let l = 0; l <= line && l < lines.length; l++) {
    let generated = 0;
    for (const segment of lines[l].split(",")) {
      if (segment === "") {
        continue;
      }
      const fields = [];
      let value = 0;
      let shift = 0;
      for (const char of segment) {
        const digit = BASE64.indexOf(char);
        value += (digit & 31) << shift;
        shift += 5;
        if ((digit & 32) === 0) {
          fields.push(value & 1 ? -(value >>> 1) : value >>> 1);
          value = 0;
          shift = 0;
        }
      }
      generated += fields[0];
      if (fields.length >= 4) {
        source += fields[1];
        sourceLine += fields[2];
        sourceColumn += fields[3];
      }
      if (l === line && generated <= column) {
        // A segment without a source maps the code from it on to nothing.
        found = fields.length >= 4 ? [source, sourceLine, sourceColumn] : undefined;
      }
    }
  }
  return found;
}

/** Makes the function the runner runs, which the job's module exports as `run`:
 * `export const run = job((ctx) => { ... })`.
 *
 * The function returns `COMPLETED` (or nothing) when all the work is done, or
 * `SUSPENDED` (`return ctx.suspend()`) when it stopped early with its state saved. Any
 * exception fails the run: the runner prints it with its stack and exits 1. `state`
 * makes the state of a first run (and the fields a resumed state lacks). */
export function job(fn, { state } = {}) {
  if (typeof fn !== "function") {
    throw new TypeError("job(fn): fn is the job's function, `(ctx) => { ... }`");
  }
  return function runJob() {
    let ctx;
    let outcome;
    try {
      ctx = new Ctx(state, `js:${JOB_NAME}`);
      outcome = fn(ctx);
      if (outcome && typeof outcome.then === "function") {
        throw new TypeError("the job function returned a Promise: a job is synchronous (no async/await)");
      }
      if ((outcome === undefined || outcome === COMPLETED) && !ctx.stopped) {
        if (ctx.nothingToSave()) {
          flushOutputs();
        } else {
          // The final state and what the job wrote since its last save, which the
          // runner's record of the completion keeps. A state that cannot be saved (too
          // large, not JSON) leaves the last saved one.
          try {
            ctx.save();
          } catch (error) {
            if (!(error instanceof CheckpointError) || !["too-large", "encoding"].includes(error.kind)) {
              throw error;
            }
            flushOutputs();
          }
        }
      }
    } catch (error) {
      if (error instanceof Stopped) {
        return SUSPENDED;
      }
      // Every failure becomes the WIT error, which the runner prints.
      throw describe(error);
    }
    if ((outcome === undefined || outcome === COMPLETED) && ctx.stopped) {
      // A loop that swallowed the batch's Stopped ended early: the work is not done,
      // and the state saved with the batch's place is where to go on.
      console.error(
        "runner-job: the job returned COMPLETED after a batch stopped on the runner's request: the run ends as suspended",
      );
      return SUSPENDED;
    }
    if (outcome === undefined || outcome === COMPLETED) {
      return COMPLETED;
    }
    if (outcome === SUSPENDED) {
      return SUSPENDED;
    }
    throw `the job function returned ${JSON.stringify(outcome) ?? String(outcome)}: return COMPLETED, SUSPENDED or nothing`;
  };
}
