"""`wordcount.wasm DIR [TOP]`: counts the words of every file under DIR (a directory
given to the job with `runner --dir HOST::DIR`) and prints the TOP (default 10) most
frequent. Stopped and run again, it resumes at the file and byte offset it reached.

The Python twin of `examples/wordcount`: a word is a run of letters and numbers
(Unicode general categories L and N, which is what `str.isalnum` and the regular
expression below accept), compared in lower case; symbolic links are not followed. The
output is the same.
"""

import os
import re
import sys

import runner_job

WORD = re.compile(r"[^\W_]+")


@runner_job.job
def wordcount(ctx):
    if len(sys.argv) < 2:
        raise ValueError("usage: wordcount.wasm DIR [TOP]")
    top = parse_top(sys.argv[2]) if len(sys.argv) > 2 else 10
    if not ctx.resumed:
        ctx.state = {"files": list_files(sys.argv[1]), "counts": {}}
    counts = ctx.state["counts"]
    for line in ctx.batch(runner_job.Lines(ctx.state["files"]), save_every=1.0):
        for word in WORD.findall(line):
            word = word.lower()
            counts[word] = counts.get(word, 0) + 1

    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    files = len(ctx.state["files"])
    print(f"{sum(counts.values())} words, {len(counts)} distinct, in {files} files")
    for word, count in ranked[:top]:
        print(f"{count:>8} {word}")


def parse_top(arg):
    """A whole number as Rust's `usize` (32 bits here) parses it: digits, maybe a `+`."""
    if not re.fullmatch(r"\+?[0-9]+", arg) or int(arg) >= 1 << 32:
        raise ValueError(f"TOP `{arg}` is not a whole number")
    return int(arg)


def list_files(top):
    """Every regular file under `top`, recursively, sorted; links are not followed."""
    if not os.path.isdir(top):
        raise FileNotFoundError(f"cannot list {top} (did you pass --dir HOST::{top}?)")

    def cannot_list(error):
        raise OSError(f"cannot list {error.filename}: {error.strerror}") from error

    files = []
    for root, _dirs, names in os.walk(top, onerror=cannot_list):
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                files.append(path)
    return sorted(files)
