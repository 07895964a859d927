"""What a job is: its spec, built from a ``start_job`` request with every path checked.

Paths are resolved here against the data directory, derived ones included; symlinks
are followed before the check, so neither ``..`` nor an absolute path nor a link can
make the server read or write a file outside it. The formats check again at every open
(``planchet.paths``), since a file can be swapped for a link after the job starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .exceptions import BadRequest, PathRefused
from .formats import get_reader, get_writer, is_bare, is_gzip
from .messages import Mode, StartJob
from .paths import refusal

ERROR_SUFFIX = ".errors.jsonl"


class JobSpec(BaseModel):
    """A job as stored in Redis. ``identity`` decides whether a restart is a resume."""

    model_config = ConfigDict(frozen=True)

    name: str
    mode: Mode
    reader: str | None
    writer: str | None
    input_path: str | None
    output_path: str | None
    error_path: str
    metadata: dict[str, Any]
    batch_size: int
    lease_timeout: float
    batch_seconds: float | None = None
    max_attempts: int

    def identity(self) -> dict[str, Any]:
        """The fields that make two specs the same job; the rest are tunables."""
        return self.model_dump(exclude={"batch_size", "lease_timeout", "max_attempts",
                                        "batch_seconds"})

    @property
    def files(self) -> list[str]:
        """The files this job writes, which no other job may write."""
        return [p for p in (self.output_path, self.error_path) if p]


def resolve_inside(data_dir: Path, raw: Any, key: str) -> Path:
    """Resolve ``raw`` against ``data_dir``; refuse anything that ends up outside it."""
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        raise BadRequest(f"metadata[{key!r}] must be a non-empty path string")
    return _checked(data_dir, data_dir.resolve() / raw, f"{key} {raw!r}")


def _checked(data_dir: Path, path: Path, what: str) -> Path:
    """``path`` with every link followed, or PathRefused if that leaves the data dir."""
    path = path.resolve()
    reason = refusal(data_dir, path)
    if reason:
        raise PathRefused(f"{what} is {reason}")
    return path


def _check_mode(request: StartJob) -> None:
    needs_reader = request.mode in ("read", "read-write")
    needs_writer = request.mode in ("write", "read-write")
    if needs_reader != bool(request.reader):
        raise BadRequest(f"mode {request.mode!r} {'needs' if needs_reader else 'takes no'} reader")
    if needs_writer != bool(request.writer):
        raise BadRequest(f"mode {request.mode!r} {'needs' if needs_writer else 'takes no'} writer")


def build_spec(request: StartJob, data_dir: Path) -> JobSpec:
    """Check a ``start_job`` request and turn it into a spec with absolute paths."""
    _check_mode(request)
    meta = request.metadata
    is_bare(meta)  # "output": "envelope" or "bare", checked before any file is touched
    input_path = output_path = None
    if request.reader:
        get_reader(request.reader)
        input_path = resolve_inside(data_dir, meta.get("input_file_path"), "input_file_path")
    if request.writer:
        get_writer(request.writer)
        output_path = resolve_inside(data_dir, meta.get("output_file_path"), "output_file_path")
    if "error_file_path" in meta:
        error_path = resolve_inside(data_dir, meta["error_file_path"], "error_file_path")
    else:
        base = output_path or input_path
        assert base is not None  # every mode has a reader or a writer
        derived = base.with_name(base.name + ERROR_SUFFIX)  # may be a planted link
        error_path = _checked(data_dir, derived, f"the default error file {derived.name!r}")
    if input_path is not None and input_path in (output_path, error_path):
        raise BadRequest("a job cannot write the file it reads")
    if output_path == error_path:
        raise BadRequest("the error file must differ from the output file")
    if is_gzip(error_path):
        raise BadRequest("the error file is plain JSONL: give it a name that does not end in .gz")
    return _storable(JobSpec(
        name=request.job,
        mode=request.mode,
        reader=request.reader,
        writer=request.writer,
        input_path=str(input_path) if input_path else None,
        output_path=str(output_path) if output_path else None,
        error_path=str(error_path),
        metadata=meta,
        batch_size=request.batch_size,
        lease_timeout=request.lease_timeout,
        batch_seconds=request.batch_seconds,
        max_attempts=request.max_attempts,
    ))


def _storable(spec: JobSpec) -> JobSpec:
    """``spec``, once it is known to come back unchanged from its stored JSON form.

    A spec that Redis can hold but the server cannot load (metadata nested too deeply
    for pydantic, say) would stop the server at every start, so it is refused up front.
    """
    try:
        back = JobSpec.model_validate_json(spec.model_dump_json())
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
    except ValueError as exc:  # PydanticSerializationError
        reason = str(exc)
    else:
        if back == spec:
            return spec
        reason = "it reads back changed"
    raise BadRequest(f"the job's metadata cannot be stored: {reason}")
