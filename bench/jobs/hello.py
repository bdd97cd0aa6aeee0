"""The Python job whose start the benchmark measures: it prints one line."""

import runner_job


@runner_job.job
def hello(ctx):
    print("hello from a Python job")
