// The JavaScript (TypeScript) job the integration tests run: `testjob.wasm MODE [ARG...]`.
// Its modes mirror those of the Rust and Python test jobs where the tests run them all.

import { Lines, args, exit, job, range, sleep, waitForShutdown } from "runner-job";
import { subscribeDuration } from "wasi:clocks/monotonic-clock@0.2.12";

interface State {
  sum: number;
  last?: number;
}

function ready(): void {
  console.log("ready");
}

function fail(what: string): never {
  throw new TypeError(`the input is bad: ${what}`);
}

export const run = job<State>(
  (ctx) => {
    const [, mode, ...rest] = args();
    switch (mode) {
      case "sum": {
        // Sums range(N) in a batch saving every 100 ms, and prints the sum; typed state.
        ready();
        for (const n of ctx.batch(range(Number(rest[0])), { saveEvery: 0.1 })) {
          ctx.state.sum += n;
        }
        console.log(`sum ${ctx.state.sum}`);
        return;
      }
      case "sequence": {
        // Appends the lines 1 to N to out.txt in the output directory through
        // `ctx.output`, about 3 ms a line, saving every 100 lines.
        const n = Number(rest[0]);
        const out = ctx.output("out.txt");
        for (const line of ctx.batch(range(1, n + 1), { saveEveryItems: 100 })) {
          out.write(`${line}\n`);
          sleep(0.003);
        }
        return;
      }
      case "lines": {
        // Prints each line of the files PATH... as a JSON string.
        for (const line of ctx.batch(new Lines(rest))) {
          console.log(JSON.stringify(line));
        }
        return;
      }
      case "spin": {
        // Computes forever, never looking at the stop request.
        ready();
        let n = 0;
        for (;;) {
          n = (n * 31 + 7) % 1000003;
        }
      }
      case "block": {
        // Blocks in the host for an hour, never looking at the stop request.
        ready();
        subscribeDuration(3_600_000_000_000n).block();
        return;
      }
      case "wait": {
        // Waits for the stop request, then suspends.
        ready();
        waitForShutdown();
        return ctx.suspend();
      }
      case "throw":
        fail(rest[0] ?? "nothing given");
      case "exit":
        exit(Number(rest[0]));
      default:
        throw new Error(`unknown mode ${JSON.stringify(mode)}`);
    }
  },
  { state: () => ({ sum: 0 }) },
);
