"""Write batch jobs for `runner` in Python: they stop cleanly when asked and resume
where they stopped.

A job is one function marked ``@runner_job.job``. It gets a :class:`Ctx` whose
``state`` was loaded from the last checkpoint (or is new on a first run). The shortest
resumable job walks its work with :meth:`Ctx.batch`, which keeps its place in the
checkpoint, saves every few seconds, and ends the run with the state saved when the
runner asks the job to stop::

    import runner_job

    @runner_job.job
    def count(ctx):
        for n in ctx.batch(range(1_000_000)):
            ctx.state["total"] = ctx.state.get("total", 0) + n
        print(ctx.state["total"])

Build it into a component with ``guest-sdk/python/build_job.py count.py -o count.wasm``
and run it with ``runner count.wasm``.

The state is saved as JSON, as the object ``{"state": STATE, "batches": [CURSOR, ...],
"job": "python:MODULE"}`` (the layout the Rust SDK uses; a checkpoint another job saved
is refused): ``ctx.state`` must hold what ``json.dumps`` accepts, or
be a dataclass (``@runner_job.job(state=MyState)``) whose fields do.
"""

import builtins
import dataclasses
import io
import json
import os
import sys
import time
import traceback
import weakref
from os import PathLike
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Tuple,
    Union,
    get_type_hints,
)
from urllib.parse import urlsplit

import wit_world
from componentize_py_types import Err
from wit_world.imports import checkpoint as _checkpoint
from wit_world.imports import exit as _exit
from wit_world.imports import lifecycle as _lifecycle
from wit_world.imports import monotonic_clock as _clock
from wit_world.imports import outgoing_handler as _outgoing
from wit_world.imports import streams as _streams
from wit_world.imports import wasi_http_types as _http
from wit_world.imports import poll as _poll
from wit_world.imports import progress as _progress

__all__ = [
    "COMPLETED",
    "SUSPENDED",
    "CheckpointError",
    "Ctx",
    "HttpError",
    "Lines",
    "Stopped",
    "deadline",
    "exit",
    "http_get",
    "job",
    "report_progress",
    "shutdown_requested",
    "shutdown_pollable",
    "sleep",
    "stop_reason",
    "wait_for",
    "wait_for_shutdown",
    "wait_until",
]

#: Return it from a job when all the work is done: the runner exits 0. Returning
#: ``None`` means the same.
COMPLETED = "completed"
#: Return it when the job stopped early with its state saved (:meth:`Ctx.suspend` does
#: both): the runner exits 75 and the next run resumes.
SUSPENDED = "suspended"

_DEFAULT_SAVE_EVERY = 5.0
# A batch looks at the clock and the shutdown flag (host calls) about once a
# millisecond, counting items between looks; _MAX_STRIDE bounds how late a request is
# seen when the items turn slow all at once (the count shrinks at the next look).
_LOOK_EVERY = 0.001
_MAX_STRIDE = 1 << 10


class Stopped(BaseException):
    """Raised by a batch when the runner asked the job to stop, after it saved the state.

    It derives from ``BaseException`` so that ``except Exception`` in job code lets it
    through: the SDK catches it and ends the run as suspended.
    """


class CheckpointError(Exception):
    """A checkpoint was not saved; the state saved before is still the current one.

    ``kind`` is ``"too-large"``, ``"fenced"``, ``"io"``, ``"in-batch"`` or
    ``"encoding"`` (the state is not JSON that loads back the same).
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def shutdown_requested() -> bool:
    """True once the runner has asked the job to stop. Cheap: it reads a flag."""
    return _lifecycle.shutdown_requested()


def stop_reason() -> Optional[str]:
    """Why the runner asked the job to stop: ``"terminate"``, ``"interrupt"``,
    ``"hangup"``, ``"timeout"`` or ``"fenced"``; ``None`` before it has."""
    reason = _lifecycle.shutdown_reason()
    return None if reason is None else reason.name.lower()


def deadline() -> Optional[float]:
    """When the runner will stop the job by force, on the ``time.monotonic()`` clock,
    once it has asked the job to stop; ``None`` before."""
    instant = _lifecycle.deadline()
    if instant is None:
        return None
    return time.monotonic() + max(0, instant - _clock.now()) / 1e9


def wait_for_shutdown() -> None:
    """Blocks until the runner asks the job to stop."""
    _lifecycle.subscribe_shutdown().block()


def shutdown_pollable() -> Any:
    """A pollable that becomes ready when the runner asks the job to stop, and stays
    ready: for a job that polls its own pollables (``wit_world.imports.poll``) itself.
    :func:`wait_for` does that for you."""
    return _lifecycle.subscribe_shutdown()


def wait_for(pollables: List[Any]) -> Optional[int]:
    """Waits until one of the job's own ``pollables`` is ready (a socket, a stream, a
    timer), or the runner asks the job to stop, whichever comes first: the index of a
    ready pollable, or ``None`` for the stop request (which wins when both are ready).
    How a worker waits for its next piece of work without making a stop wait."""
    stop = _lifecycle.subscribe_shutdown()
    ready = _poll.poll(list(pollables) + [stop])
    if shutdown_requested():
        return None
    return next((index for index in ready if index < len(pollables)), None)


class HttpError(Exception):
    """An HTTP request that got no response: refused because ``runner --allow-net`` does
    not name its host and port (``HttpRequestDenied``), a connection or DNS error, a
    broken response. ``code`` is the ``wasi:http`` error code's name."""

    def __init__(self, url: str, code: Any):
        self.code = code if isinstance(code, str) else type(code).__name__.replace("ErrorCode_", "")
        super().__init__(f"GET {url}: {self.code}")


def http_get(url: str, headers: Optional[Dict[str, str]] = None) -> Tuple[int, bytes]:
    """Sends a GET for ``url`` (``http://`` or ``https://``) through ``wasi:http``, and
    returns the response's status and body. Only the hosts and ports ``runner
    --allow-net`` names are reached; any other request raises :class:`HttpError`. While
    it waits for the response and its body, a stop request ends the wait at once: it
    raises :class:`Stopped`, and the run ends suspended, from the state saved last (in
    a batch, the place before the item that was fetching)."""
    parts = urlsplit(url)
    schemes = {"http": _http.Scheme_Http(), "https": _http.Scheme_Https()}
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    fields = _http.Fields.from_list(
        [(name, value.encode()) for name, value in (headers or {}).items()]
    )
    request = _http.OutgoingRequest(fields)
    request.set_scheme(schemes[parts.scheme])
    request.set_authority(parts.netloc)
    request.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    try:
        pending = _outgoing.handle(request, None)
    except Err as error:
        raise HttpError(url, error.value) from None
    # Each resource is dropped before the one it came from, as WASI requires.
    with pending:
        with pending.subscribe() as ready:
            if wait_for([ready]) is None:
                raise Stopped()
        with _response(url, pending.get()) as response, response.consume() as body:
            with body.stream() as stream, stream.subscribe() as readable:
                chunks = []
                while True:
                    try:
                        chunk = stream.read(64 * 1024)
                    except Err as error:
                        if isinstance(error.value, _streams.StreamError_Closed):
                            break
                        raise HttpError(url, error.value) from None
                    if chunk:
                        chunks.append(chunk)
                    elif wait_for([readable]) is None:
                        raise Stopped()
            return response.status(), b"".join(chunks)


def _response(url: str, result: Any) -> Any:
    """The response in what ``future-incoming-response.get`` returns once it is ready:
    ``Ok(Ok(response))``, ``Ok(Err(error-code))``, or ``Err`` once taken."""
    if result is None or isinstance(result, Err):
        raise HttpError(url, "no response")
    inner = result.value
    if isinstance(inner, Err):
        raise HttpError(url, inner.value)
    return inner.value


def sleep(seconds: float) -> bool:
    """Sleeps for ``seconds``, or less if the runner asks the job to stop meanwhile.
    Returns ``True`` if it slept the whole time, ``False`` if a stop request woke it."""
    timer = _clock.subscribe_duration(max(0, int(seconds * 1e9)))
    stop = _lifecycle.subscribe_shutdown()
    _poll.poll([timer, stop])
    return not shutdown_requested()


def wait_until(ready: Callable[[], bool], interval: float) -> bool:
    """Waits until ``ready()`` is true, asking it every ``interval`` seconds, and
    returns ``True``; or returns ``False`` as soon as the runner asks the job to stop."""
    while True:
        if shutdown_requested():
            return False
        if ready():
            return True
        if not sleep(interval):
            return False


def report_progress(done: int, total: Optional[int] = None) -> None:
    """Reports ``done`` units of work out of ``total``, if known. The runner shows the
    latest report from time to time and when the job stops."""
    _progress.report(done, total)


def exit(code: int) -> None:
    """Ends the job at once; the runner exits with ``code`` (0 to 255). Nothing is
    saved."""
    _exit.exit_with_code(code)


#: Every file open for writing in the output directory: flushed before each save.
_outputs: "weakref.WeakSet[Any]" = weakref.WeakSet()
#: Whether the job opened one in this run: then a save records the output.
_opened_output = False


def _track(file: Any) -> None:
    global _opened_output
    _outputs.add(file)
    _opened_output = True


def _output_dir() -> Optional[str]:
    """The output directory as the job sees it (``--output``'s guest path, which may be
    relative), or ``None``."""
    return os.environ.get("RUNNER_OUTPUT_DIR") or None


def _watch_open() -> None:
    """Makes ``open`` (and ``io.open``, which ``pathlib`` uses) note every file it opens
    for writing in the output directory, so that the SDK flushes it before each save:
    the natural code, a buffered file written in a batch loop, then writes each result
    exactly once. Run when the job starts: the output directory is known only then."""
    out = _output_dir()
    if out is None or getattr(builtins.open, "_runner_job", False):
        return
    # Compared as absolute paths, as the strings they are.
    out = os.path.abspath(out)
    original = builtins.open

    def open(file, mode="r", *args, **kwargs):  # noqa: A001 (it is the point)
        opened = original(file, mode, *args, **kwargs)
        if isinstance(file, (str, bytes, PathLike)) and any(c in mode for c in "wax+"):
            path = os.path.abspath(os.fsdecode(file))
            if path.startswith(out + os.sep):
                _track(opened)
        return opened

    open._runner_job = True  # type: ignore[attr-defined]
    open.__doc__ = original.__doc__
    builtins.open = open
    io.open = open


def _flush_outputs() -> None:
    """Flushes every file open for writing in the output directory, so that a save
    records everything written before it."""
    for file in list(_outputs):
        try:
            if file.closed:
                continue
            file.flush()
        except ValueError:
            # A wrapper whose buffer was detached: what it wrote is its new owner's.
            continue
        except OSError as error:
            raise CheckpointError(
                "io", f"cannot write output `{getattr(file, 'name', file)}`: {error}"
            ) from error


def _save_bytes(data: bytes) -> None:
    _flush_outputs()
    try:
        _checkpoint.save(data)
    except Err as error:
        value = error.value
        if isinstance(value, _checkpoint.Error_TooLarge):
            raise CheckpointError(
                "too-large",
                f"checkpoint too large: the runner accepts at most {value.value} bytes",
            ) from None
        if isinstance(value, _checkpoint.Error_Fenced):
            raise CheckpointError(
                "fenced", "checkpoint refused: another runner now owns this job"
            ) from None
        raise CheckpointError("io", f"checkpoint not saved: {value.value}") from None


class Lines:
    """The lines of one or more files, one after the other, for :meth:`Ctx.batch`.

    Each item is a line without its line ending (``\\n`` or ``\\r\\n``); bytes that are
    not UTF-8 become U+FFFD. The cursor saved in the checkpoint is
    ``{"file": INDEX, "offset": BYTES}``, as in the Rust SDK. The files must not change
    between runs.
    """

    def __init__(self, paths: Iterable[Union[str, PathLike]]):
        self.paths = [str(path) for path in paths]


class _Numbers:
    def __init__(self, numbers: range):
        if numbers.step != 1:
            raise ValueError(f"a batch walks ranges with step 1, not {numbers!r}")
        self.start, self.end, self.next = numbers.start, max(numbers.start, numbers.stop), numbers.start

    def cursor(self) -> Any:
        return self.next

    def seek(self, cursor: Any) -> None:
        if not isinstance(cursor, int) or not self.start <= cursor <= self.end:
            raise ValueError(
                f"the checkpoint is at number {cursor!r}, outside this batch's {self.start}..{self.end}"
            )
        self.next = cursor

    def items(self) -> Iterator[Any]:
        while self.next < self.end:
            n = self.next
            self.next = n + 1
            yield n

    def progress(self):
        return self.next - self.start, self.end - self.start


class _Lines:
    def __init__(self, lines: Lines):
        self.paths = lines.paths
        self.sizes = None
        self.file, self.offset = 0, 0

    def _sizes(self) -> List[int]:
        if self.sizes is None:
            import os

            self.sizes = [os.stat(path).st_size for path in self.paths]
        return self.sizes

    def cursor(self) -> Any:
        return {"file": self.file, "offset": self.offset}

    def seek(self, cursor: Any) -> None:
        sizes = self._sizes()
        file, offset = cursor["file"], cursor["offset"]
        fits = (offset <= sizes[file]) if file < len(sizes) else (file == len(sizes) and offset == 0)
        if not fits:
            raise ValueError(
                f"the checkpoint is at byte {offset} of file {file}, which these "
                f"{len(sizes)} files do not have (did the input change?)"
            )
        self.file, self.offset = file, offset

    def items(self) -> Iterator[str]:
        self._sizes()
        while self.file < len(self.paths):
            with open(self.paths[self.file], "rb") as handle:
                handle.seek(self.offset)
                for raw in handle:
                    self.offset += len(raw)
                    if raw.endswith(b"\n"):
                        raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
                    yield raw.decode("utf-8", errors="replace")
            self.file, self.offset = self.file + 1, 0

    def progress(self):
        sizes = self._sizes()
        return sum(sizes[: self.file]) + self.offset, sum(sizes)


class _Records:
    def __init__(self, records: Iterable[Any]):
        try:
            self.total = len(records)  # type: ignore[arg-type]
        except TypeError:
            self.total = None
        self.records = iter(records)
        self.walked = 0

    def cursor(self) -> Any:
        return self.walked

    def seek(self, cursor: Any) -> None:
        while self.walked < cursor:
            try:
                next(self.records)
            except StopIteration:
                raise ValueError(
                    f"the checkpoint has walked {cursor} records, but there are only "
                    f"{self.walked} now (did the input change?)"
                ) from None
            self.walked += 1

    def items(self) -> Iterator[Any]:
        for record in self.records:
            self.walked += 1
            yield record

    def progress(self):
        return self.walked, self.total


def _source(items: Any):
    if isinstance(items, range):
        return _Numbers(items)
    if isinstance(items, Lines):
        return _Lines(items)
    return _Records(items)


class Ctx:
    """A running job: its state, and the way to save it.

    ``ctx.state`` is the state loaded from the last checkpoint, or a new one on a first
    run (an empty ``dict``, or the dataclass given to ``@job(state=...)`` built with no
    arguments). Change it freely; each checkpoint saves it.
    """

    def __init__(self, state_type: Optional[type], job: str):
        self._state_type = state_type
        # The job's name in its checkpoints: another job's checkpoint is refused.
        self._job = job
        self._last_save = time.monotonic()
        self._ended: List[Any] = []
        self._open = False
        self._stopped = False
        self._saved = False
        raw = _checkpoint.load()
        self.resumed = raw is not None
        if raw is None:
            self._loaded: List[Any] = []
            self.state = state_type() if state_type else {}
            return
        try:
            saved = json.loads(raw)
            saver = saved.get("job") if isinstance(saved, dict) else None
            if saver is not None and saver != job:
                raise RuntimeError(
                    f"the checkpoint was saved by another job (`{saver}`), not by this one "
                    f"(`{job}`): two jobs share one job id (by default, the job file's "
                    "name). Give each its own --job-id, or pass --start-over to start this "
                    "one from scratch"
                )
            self._loaded = saved.get("batches", [])
            state = saved["state"]
            self.state = _from_json(state_type, state) if state_type else state
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(
                "the saved state does not fit this job's state (a job changed since it "
                f"saved? start over with `runner --start-over`): {error}"
            ) from error

    def output(self, path: Union[str, PathLike], binary: bool = False) -> Any:
        """Opens ``path``, a file in the job's output directory (``runner --output
        DIR``), for appending results that end up there exactly once: the SDK flushes it
        before every save (a batch's own, :meth:`checkpoint`, :meth:`suspend`) and when
        the job completes, so each checkpoint records what was written before it, and a
        resumed run goes on where it left off. Text (UTF-8) unless ``binary``; parent
        directories are created. A file opened with ``open`` in the output directory while
        the job runs is flushed the same way; this finds the directory for you. A
        writer with a buffer of its own over such a file (``gzip.open``, a wrapper made
        with ``io.TextIOWrapper``) is not: flush or close it before each save."""
        out = _output_dir()
        if out is None:
            raise RuntimeError(
                "the job has no output directory: run it with `runner --output DIR`"
            )
        relative = os.fsdecode(path)
        parts = relative.replace(os.sep, "/").split("/")
        if os.path.isabs(relative) or any(part in ("", ".", "..") for part in parts):
            raise ValueError(
                f"output {relative!r} is not a path inside the output directory (use a "
                "relative path without '..')"
            )
        full = os.path.join(out, relative)
        parent = os.path.dirname(full)
        if os.path.normpath(parent) != os.path.normpath(out):
            os.makedirs(parent, exist_ok=True)
        if binary:
            file = open(full, "ab")
        else:
            file = open(full, "a", encoding="utf-8")
        _track(file)
        return file

    def should_stop(self) -> bool:
        """True once the runner has asked the job to stop: save and return soon."""
        return shutdown_requested()

    def deadline(self) -> Optional[float]:
        """See :func:`deadline`."""
        return deadline()

    def progress(self, done: int, total: Optional[int] = None) -> None:
        """Reports progress; :meth:`batch` reports for you."""
        report_progress(done, total)

    def _save(self, running: Any = None, has_running: bool = False) -> None:
        state = dataclasses.asdict(self.state) if dataclasses.is_dataclass(self.state) else self.state
        # The batches this run has not reached keep their loaded places: the state
        # holds their work.
        batches = self._ended + [running] if has_running else list(self._ended)
        batches += self._loaded[len(batches) :]
        saved = {"state": state, "batches": batches, "job": self._job}
        try:
            data = json.dumps(saved, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as error:
            raise CheckpointError("encoding", f"the state is not JSON: {error}") from error
        # What would load back different (int keys become strings, tuples lists) must
        # not replace the state that loads back the same.
        if json.loads(data) != saved:
            raise CheckpointError(
                "encoding",
                "the state would not load back the same from JSON: use str keys in "
                "dicts, lists rather than tuples or sets",
            )
        _save_bytes(data.encode())
        self._last_save = time.monotonic()
        self._saved = True

    def checkpoint(self) -> None:
        """Saves the state now; durable when it returns. Inside a :meth:`batch` loop it
        raises ``CheckpointError("in-batch")``: the batch saves, with its place."""
        if self._open:
            raise CheckpointError(
                "in-batch",
                "checkpoint inside a `ctx.batch` loop: the batch saves the state with its "
                "place in the items (set how often with `save_every`); checkpoint after "
                "the loop instead",
            )
        self._save()

    def checkpoint_every(self, seconds: float) -> bool:
        """Saves if ``seconds`` have passed since the last save; returns whether it did."""
        if not self._open and time.monotonic() - self._last_save < seconds:
            return False
        self.checkpoint()
        return True

    def suspend(self) -> str:
        """Saves the state and returns :data:`SUSPENDED`, for ``return ctx.suspend()``. A
        job with nothing to save (a stateless worker: no checkpoint, no batch, an empty
        state) saves nothing, and the runner says so rather than that a state is saved."""
        if not self._nothing_to_save():
            self.checkpoint()
        return SUSPENDED

    def _nothing_to_save(self) -> bool:
        """Whether the job is stateless: no checkpoint, no save in this run, no output
        opened (a save records the output), no batch, and an empty state."""
        return (
            not self.resumed
            and not self._saved
            and not self._open
            and not self._ended
            and not _opened_output
            and self.state in (None, {})
        )

    def batch(
        self,
        items: Union[range, Lines, Iterable[Any]],
        save_every: float = _DEFAULT_SAVE_EVERY,
        save_every_items: Optional[int] = None,
    ) -> Iterator[Any]:
        """Walks ``items`` with its place kept in the checkpoint.

        ``items`` is a ``range`` (step 1; the cursor is the next number), :class:`Lines`
        of files, or any other iterable (the cursor is how many items were walked; the
        next run skips that many, so it must yield the same items in the same order).

        The batch saves the state with its place every ``save_every`` seconds, and also
        every ``save_every_items`` items if given, and reports progress. When the runner
        asks the job to stop it saves between two items and raises :class:`Stopped`,
        which ends the run as suspended; the next run's batch starts at the first item
        whose loop body had not finished. Batches run one at a time, in the same order
        on each run: a batch takes its number in the checkpoint when its loop starts.
        A loop left with ``break`` keeps its place at that item (and a batch kept in a
        variable after a ``break`` stays open until it is garbage-collected).
        """
        return self._walk(_source(items), save_every, save_every_items)

    def _walk(self, source, save_every: float, save_every_items: Optional[int]) -> Iterator[Any]:
        # A generator: this runs when the loop starts, so batches number themselves in
        # the order their loops run, whenever they were made.
        if self._open:
            raise RuntimeError(
                "a batch started inside another batch: a job runs its batches one after "
                "another (flatten nested items into one source)"
            )
        number = len(self._ended)
        if number < len(self._loaded):
            try:
                source.seek(self._loaded[number])
            except (ValueError, KeyError, TypeError, IndexError) as error:
                raise ValueError(
                    f"cannot resume batch {number} at {json.dumps(self._loaded[number])}: {error}"
                ) from error
        self._open = True
        resume_at = source.cursor()
        since_save, stride, countdown = 0, 1, 1
        last_look = time.monotonic()
        try:
            for item in source.items():
                countdown -= 1
                if countdown == 0:
                    now = time.monotonic()
                    since, last_look = now - last_look, now
                    # Towards a look every _LOOK_EVERY: at once when items turned slow,
                    # at most twice as many items when they turned fast.
                    fitting = int(stride * _LOOK_EVERY / max(since, 1e-9))
                    stride = max(1, min(fitting, stride * 2, _MAX_STRIDE))
                    countdown = stride
                    done, total = source.progress()
                    report_progress(done, total)
                    if shutdown_requested():
                        self._save(resume_at, True)
                        self._stopped = True
                        raise Stopped()
                    if now - self._last_save >= save_every:
                        self._save(resume_at, True)
                        since_save = 0
                if save_every_items is not None and since_save >= save_every_items:
                    self._save(resume_at, True)
                    since_save = 0
                yield item
                since_save += 1
                resume_at = source.cursor()
            done, total = source.progress()
            report_progress(done, total)
        finally:
            self._open = False
            self._ended.append(resume_at)


def _from_json(state_type: type, data: Any) -> Any:
    """Builds the dataclass `state_type` from its JSON object, nested dataclasses too."""
    hints = get_type_hints(state_type)
    fields = {}
    for field in dataclasses.fields(state_type):
        if field.name in data:
            value, hint = data[field.name], hints.get(field.name)
            if dataclasses.is_dataclass(hint) and isinstance(value, dict):
                value = _from_json(hint, value)
            fields[field.name] = value
    return state_type(**fields)


def job(function: Optional[Callable[[Ctx], Any]] = None, *, state: Optional[type] = None):
    """Marks the function the runner runs: ``def NAME(ctx): ...``.

    It returns :data:`COMPLETED` (or ``None``) when all the work is done, or
    :data:`SUSPENDED` (``return ctx.suspend()``) when it stopped early with its state
    saved. Any exception fails the run: the runner prints its traceback and exits 1.
    ``state=`` names a dataclass for the state, built with no arguments on a first run.
    A module has exactly one job function.
    """

    def register(function: Callable[[Ctx], Any]) -> Callable[[Ctx], Any]:
        module = sys.modules[function.__module__]
        if hasattr(module, "WitWorld"):
            raise RuntimeError(f"module {module.__name__} already has a job function")
        module.WitWorld = _world(function, state)  # type: ignore[attr-defined]
        return function

    return register if function is None else register(function)


def _world(function: Callable[[Ctx], Any], state_type: Optional[type]):
    class WitWorld(wit_world.WitWorld):
        def run(self) -> wit_world.Outcome:
            try:
                _watch_open()
                ctx = Ctx(state_type, f"python:{function.__module__}")
                outcome = function(ctx)
                if outcome in (None, COMPLETED) and not ctx._stopped and not ctx._nothing_to_save():
                    # The final state and what the job wrote since its last save, which
                    # the runner's record of the completion keeps. A state that cannot be
                    # saved (too large, not JSON) leaves the last saved one.
                    try:
                        ctx._save()
                    except CheckpointError as error:
                        if error.kind not in ("too-large", "encoding"):
                            raise
                        _flush_outputs()
            except Stopped:
                return wit_world.Outcome.SUSPENDED
            except SystemExit as error:
                # `sys.exit(n)` exits with n, as in CPython (n & 0xFF; a message exits 1).
                code = error.code
                if code is not None and not isinstance(code, int):
                    print(code, file=sys.stderr)
                    code = 1
                code = (code or 0) & 0xFF
                sys.stdout.flush()
                sys.stderr.flush()
                if code == 0:
                    try:
                        _flush_outputs()
                    except CheckpointError as error:
                        raise Err(str(error)) from None
                    return wit_world.Outcome.COMPLETED
                exit(code)
                raise
            except BaseException as error:  # every other failure becomes the WIT error
                raise Err("".join(traceback.format_exception(error)).rstrip()) from None
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            if outcome in (None, COMPLETED) and ctx._stopped:
                # A loop that swallowed the batch's Stopped ended early: the work is not
                # done, and the state saved with the batch's place is where to go on.
                print(
                    "runner_job: the job returned COMPLETED after a batch stopped on the "
                    "runner's request: the run ends as suspended",
                    file=sys.stderr,
                )
                return wit_world.Outcome.SUSPENDED
            if outcome in (None, COMPLETED):
                return wit_world.Outcome.COMPLETED
            if outcome == SUSPENDED:
                return wit_world.Outcome.SUSPENDED
            raise Err(
                f"the job function returned {outcome!r}: return runner_job.COMPLETED, "
                "runner_job.SUSPENDED or None"
            )

    return WitWorld
