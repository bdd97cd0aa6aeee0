#!/usr/bin/env node
// Builds a JavaScript or TypeScript job into a component that `runner` runs.
//
//     node guest-sdk/js/build-job.mjs JOB.js -o JOB.wasm
//
// JOB.js (or .mjs, .ts, .mts) is a module that exports `run = job((ctx) => ...)` from
// "runner-job". It may import its own modules and packages from a node_modules
// directory next to it; not Node's own modules (`fs`, `path`, ...): a job reads files
// with the SDK's functions. A TypeScript job is type-checked (strict) with the SDK's
// pinned TypeScript first. The job is bundled into one module with esbuild (which strips
// TypeScript's types), with its source map appended for the SDK to name the job's own
// lines in a stack, and made a component with componentize-js (SpiderMonkey), against
// the `runner:job/job` world.
//
// Needs the packages of this directory's package-lock.json: `npm ci` here.

import { appendFile, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { existsSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, extname, join, relative, resolve } from "node:path";
import { isBuiltin } from "node:module";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const SDK = dirname(fileURLToPath(import.meta.url));
const WIT = resolve(SDK, "../../wit");
const WORLD = "runner:job/job";
const USAGE = "usage: node guest-sdk/js/build-job.mjs JOB.js|JOB.ts -o JOB.wasm";

/** A build that cannot go on: the message says why. */
class BuildError extends Error {}

function fail(message) {
  throw new BuildError(message);
}

/** The SDK's packages, or a message that says how to install them. */
async function load(name) {
  try {
    return await import(name);
  } catch (error) {
    if (error.code === "ERR_MODULE_NOT_FOUND") {
      fail(`${name} is not installed: run \`npm ci --ignore-scripts\` in ${SDK}`);
    }
    throw error;
  }
}

/** Type-checks a TypeScript job (strict), as the job's author wrote it; esbuild then
 * strips its types, from its own directory, where its modules and packages are. */
async function typeCheck(job, jobArg) {
  const { default: ts } = await load("typescript");
  const options = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    // console, TextEncoder, performance...: the engine has most of the DOM's basics.
    lib: ["lib.es2023.d.ts", "lib.dom.d.ts"],
    types: [],
    strict: true,
    skipLibCheck: true,
    noEmit: true,
    // What esbuild compiles file by file must mean the same.
    isolatedModules: true,
    allowImportingTsExtensions: true,
    paths: { "runner-job": [join(SDK, "runner-job.d.ts")] },
  };
  const program = ts.createProgram([job, join(SDK, "imports.d.ts")], options);
  const diagnostics = ts.getPreEmitDiagnostics(program);
  if (diagnostics.length > 0) {
    const host = {
      getCanonicalFileName: (name) => name,
      getCurrentDirectory: () => process.cwd(),
      getNewLine: () => "\n",
    };
    const format = process.stderr.isTTY ? ts.formatDiagnosticsWithColorAndContext : ts.formatDiagnostics;
    process.stderr.write(format(diagnostics, host));
    fail(`${jobArg} does not compile (TypeScript ${ts.version})`);
  }
}

/** How a place in the bundle's source map is named in a stack: relative to the job's
 * directory, the SDK's files as `runner-job/FILE`, a package from `node_modules/` on. */
function sourceName(source, jobDir) {
  const inSdk = relative(SDK, source);
  if (!inSdk.startsWith("..")) {
    return `runner-job/${inSdk}`;
  }
  const packages = source.lastIndexOf("/node_modules/");
  if (packages >= 0) {
    return source.slice(packages + 1);
  }
  const inJob = relative(jobDir, source);
  return inJob.startsWith("..") ? source : inJob;
}

/** Appends the bundle's source map to it, where the SDK finds it when it describes an
 * error (appended: the bundle's lines stay where the map says they are). */
async function appendSourceMap(bundle, jobDir) {
  const map = JSON.parse(await readFile(`${bundle}.map`, "utf8"));
  const sources = map.sources.map((source) => sourceName(resolve(dirname(bundle), source), jobDir));
  const table = JSON.stringify({ sources, mappings: map.mappings });
  await appendFile(bundle, `\nglobalThis[Symbol.for("runner-job.source-map")] = ${table};\n`);
}

async function main() {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: { output: { type: "string", short: "o" }, help: { type: "boolean", short: "h" } },
    });
  } catch (error) {
    fail(`${error.message}\n${USAGE}`);
  }
  if (parsed.values.help) {
    console.log(`${USAGE}

Builds a job (a module exporting \`run = job((ctx) => ...)\` from "runner-job") into a
component for \`runner\`. TypeScript (.ts, .mts) is type-checked first.`);
    return;
  }
  const [jobArg, ...extra] = parsed.positionals;
  if (jobArg === undefined || extra.length > 0 || parsed.values.output === undefined) {
    fail(USAGE);
  }
  const job = resolve(jobArg);
  if (!/\.(m?js|m?ts)$/.test(job)) {
    fail(`${jobArg} is not a JavaScript or TypeScript file (.js, .mjs, .ts, .mts)`);
  }
  if (!existsSync(job) || !statSync(job).isFile()) {
    fail(`${jobArg}: no such file`);
  }
  if (!existsSync(join(WIT, "job.wit"))) {
    fail(`the WIT files are not at ${WIT}: keep this script in guest-sdk/js`);
  }
  const name = basename(job, extname(job));
  const output = resolve(parsed.values.output);

  if (/\s/.test(tmpdir())) {
    // componentize-js passes the scratch directory's paths to its engine space-separated.
    fail(`the temporary directory \`${tmpdir()}\` has a space in its path: set TMPDIR to one without`);
  }
  if (/\.m?ts$/.test(job)) {
    await typeCheck(job, jobArg);
  }
  const esbuild = await load("esbuild");
  const { componentize } = await load("@bytecodealliance/componentize-js");

  const work = await mkdtemp(join(tmpdir(), "build-job-"));
  const cwd = process.cwd();
  try {
    // One module: the job, its own modules and packages, and the SDK, named as the SDK
    // expects to see it in a stack.
    const bundle = join(work, "job.js");
    let built;
    try {
      built = await esbuild.build({
        entryPoints: [job],
        outfile: bundle,
        bundle: true,
        format: "esm",
        platform: "neutral",
        target: "es2022",
        mainFields: ["module", "main"],
        external: ["runner:*", "wasi:*"],
        alias: { "runner-job": join(SDK, "runner-job.js") },
        define: { RUNNER_JOB_NAME: JSON.stringify(name) },
        metafile: true,
        // Read back by the SDK, which turns the bundle's places in a stack into the
        // job's files and lines.
        sourcemap: "external",
        sourcesContent: false,
        logLevel: "silent",
      });
    } catch (error) {
      const messages = (error.errors ?? []).map((e) => {
        const where = e.location ? `${e.location.file}:${e.location.line}:${e.location.column}: ` : "";
        const module = /^Could not resolve "(?:node:)?([^"/]+)/.exec(e.text)?.[1];
        const hint =
          module && isBuiltin(module)
            ? " (a job runs outside Node.js: read and write files with the SDK's readFile, listFiles, ctx.output...)"
            : "";
        return `${where}${e.text}${hint}`;
      });
      fail(`cannot bundle ${jobArg}:\n${messages.join("\n") || error.message}`);
    }
    const exports = Object.values(built.metafile.outputs).find((out) => out.entryPoint)?.exports ?? [];
    if (!exports.includes("run")) {
      fail(`${jobArg} does not export \`run\`: end it with \`export const run = job((ctx) => { ... });\``);
    }
    await appendSourceMap(bundle, dirname(job));
    let component;
    try {
      // componentize-js names the bundle in stacks relative to the working directory
      // (and cuts its path wrong when the directory is a prefix of it, as `/` is).
      process.chdir(work);
      ({ component } = await componentize({
        sourcePath: bundle,
        witPath: WIT,
        worldName: WORLD,
        // A job has no network: the engine's fetch() would import wasi:http.
        disableFeatures: ["http", "fetch-event"],
      }));
    } catch (error) {
      fail(`componentize-js failed building ${jobArg}: ${error.message}`);
    }
    await writeFile(output, component);
  } finally {
    process.chdir(cwd);
    await rm(work, { recursive: true, force: true });
  }
}

try {
  await main();
} catch (error) {
  if (!(error instanceof BuildError)) {
    throw error;
  }
  console.error(`build-job: ${error.message}`);
  process.exitCode = 1;
}
