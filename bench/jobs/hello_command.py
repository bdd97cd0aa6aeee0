"""The Python command whose start the benchmark measures under the runner and under
`wasmtime run`: the same line as hello.py, as a `wasi:cli/command`."""

from wit_world import exports


class Run(exports.Run):
    def run(self) -> None:
        print("hello from a Python command")
