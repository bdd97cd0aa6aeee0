"""The Python job the integration tests run: `testjob.wasm MODE [ARG...]`. Its modes
mirror those of the Rust test job where the tests run both."""

import os
import sys
import time

import runner_job


def ready():
    print("ready", flush=True)


@runner_job.job
def run(ctx):
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "two-batches":
        # Sums range(N) twice, in two batches one after the other, saving every 100 ms;
        # before each batch it suspends if asked to stop. With `wait` it first waits
        # for the request, so that it suspends before either batch runs.
        n = int(args[0])
        ctx.state.setdefault("sums", [0, 0])
        ready()
        if args[1:] == ["wait"]:
            runner_job.wait_for_shutdown()
        for part in range(2):
            if ctx.should_stop():
                return ctx.suspend()
            for i in ctx.batch(range(n), save_every=0.1):
                ctx.state["sums"][part] += i
        print(f"sums [{ctx.state['sums'][0]}, {ctx.state['sums'][1]}]")
    elif mode == "sequence":
        # Appends the lines 1 to N to out.txt in the output directory, as
        # sequence.wasm does, about 3 ms a line, saving every 100 lines; through a
        # buffered file opened with plain `open`, the code an author writes first.
        n = int(args[0])
        path = os.path.join(os.environ["RUNNER_OUTPUT_DIR"], "out.txt")
        with open(path, "a") as out:
            start, first = time.monotonic(), None
            for line in ctx.batch(range(1, n + 1), save_every_items=100):
                out.write(f"{line}\n")
                first = line if first is None else first
                runner_job.sleep(max(0.0, start + 0.003 * (line + 1 - first) - time.monotonic()))
    elif mode == "fetch":
        # Fetches BASE/part-I.txt for I in 0..N over HTTP, one item of a batch each,
        # adding up the numbers in them, 100 ms apart; resumes at the part it was
        # fetching when it was stopped.
        base, n = args[0], int(args[1])
        ctx.state.setdefault("total", 0)
        ready()
        for i in ctx.batch(range(n), save_every_items=1):
            status, body = runner_job.http_get(f"{base}/part-{i}.txt")
            if status != 200:
                raise RuntimeError(f"part {i}: HTTP {status}")
            ctx.state["total"] += sum(int(word) for word in body.split())
            print(f"fetched part {i}", flush=True)
            runner_job.sleep(0.1)
        print(f"total {ctx.state['total']}")
    elif mode == "fetch-denied":
        try:
            runner_job.http_get(args[0])
        except runner_job.HttpError as error:
            print(f"refused: {error.code}")
    elif mode == "output":
        # Appends ARG2 and a line break to ARG in the output directory, through
        # `ctx.output`, and completes.
        with ctx.output(args[0]) as out:
            out.write(args[1] + "\n")
    elif mode == "output-wait":
        # A stateless job that writes a line through `ctx.output`, waits for the stop
        # request and suspends: its suspend must save, to record the output.
        with ctx.output("out.txt") as out:
            out.write("written before the stop\n")
            ready()
            runner_job.wait_for_shutdown()
        return ctx.suspend()
    elif mode == "wait-for":
        # As the Rust job's: a 50 ms timer, then an hour's, which the stop cuts short.
        from wit_world.imports import monotonic_clock

        def woke(index):
            print("woken by the stop request" if index is None else f"woken by pollable {index}", flush=True)

        woke(runner_job.wait_for([monotonic_clock.subscribe_duration(50_000_000)]))
        ready()
        woke(runner_job.wait_for([monotonic_clock.subscribe_duration(3_600_000_000_000)]))
        return ctx.suspend()
    elif mode == "exit":
        # `sys.exit(ARG)`, with ARG a number or a message.
        sys.exit(int(args[0]) if args[0].lstrip("-").isdigit() else args[0])
    elif mode == "save":
        # Saves a state given as a Python expression, and prints what it saved.
        ctx.state = eval(args[0])
        ctx.checkpoint()
        print(f"saved {ctx.state!r}")
    elif mode == "swallow":
        # Walks range(N) swallowing the batch's Stopped (which job code should never do),
        # then returns COMPLETED.
        ready()
        try:
            for i in ctx.batch(range(int(args[0]))):
                ctx.state["last"] = i
        except BaseException:
            pass
        return runner_job.COMPLETED
    else:
        raise ValueError(f"unknown mode {mode!r}")
