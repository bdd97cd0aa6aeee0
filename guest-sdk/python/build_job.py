"""Builds a Python job into a component that `runner` runs.

    python guest-sdk/python/build_job.py JOB.py -o JOB.wasm

JOB.py is a module with one function marked `@runner_job.job`; modules next to it can
be imported. It needs componentize-py (`pip install componentize-py==0.25.1`), found
next to this Python or on PATH.
"""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

SDK = Path(__file__).resolve().parent
WIT = SDK.parent.parent / "wit"
WORLD = "runner:job/job-http"


def componentize_py() -> str:
    beside = Path(sys.executable).parent / "componentize-py"
    if beside.exists():
        return str(beside)
    found = shutil.which("componentize-py")
    if found is None:
        sys.exit(
            "build_job: componentize-py not found next to "
            f"{sys.executable} or on PATH: pip install componentize-py==0.25.1"
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Build a Python job (a module with a @runner_job.job function) into "
        "a component for `runner`."
    )
    parser.add_argument("job", type=Path, help="the job's module, such as wordcount.py")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="the component to write (.wasm)"
    )
    args = parser.parse_args()
    job: Path = args.job
    if job.suffix != ".py" or not job.is_file():
        sys.exit(f"build_job: {job} is not a Python file")
    if not job.stem.isidentifier():
        sys.exit(f"build_job: {job.name} cannot be imported: its name is not a Python identifier")
    if not WIT.is_dir():
        sys.exit(f"build_job: the WIT files are not at {WIT}: keep this script in guest-sdk/python")
    command = [
        componentize_py(),
        "--quiet",
        "-d",
        str(WIT),
        "-w",
        WORLD,
        "componentize",
        "-p",
        str(job.resolve().parent),
        "-p",
        str(SDK),
        job.stem,
        "-o",
        str(args.output),
    ]
    # componentize-py imports the job while it builds; it must not find stale bytecode.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        sys.exit(f"build_job: componentize-py failed (exit {result.returncode}) building {job}")


if __name__ == "__main__":
    main()
