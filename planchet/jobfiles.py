"""A job's three files: the input it reads, the output and the error log it appends to.

Opened together at the committed positions (the output and the error log cut back to
their committed offsets, the reader sought to its committed record), in a thread so the
event loop never waits on a disk or a FIFO, and closed together.
"""

from __future__ import annotations

from pathlib import Path

from .exceptions import FormatError
from .formats import ErrorLog, Position, Reader, Writer, get_reader, get_writer
from .spec import JobSpec
from .store import Span, pack


class JobFiles:
    def __init__(self, spec: JobSpec, root: Path | None) -> None:
        self.spec = spec
        self.root = root  # the data dir: each file is checked to be inside it when opened
        self.reader: Reader | None = None
        self.writer: Writer | None = None
        self.errors: ErrorLog | None = None

    def open(self, counts: dict[str, int]) -> None:
        """Open what the job still needs at the committed ``counts``; all or nothing."""
        spec, root = self.spec, self.root
        try:
            if spec.reader and not counts["exhausted"]:
                self.reader = get_reader(spec.reader)(Path(spec.input_path or ""), spec.metadata,
                                                      root=root)
                self.reader.open(Position(counts["next_id"], counts["offset"]))
            if spec.writer and spec.mode != "read":
                self.writer = get_writer(spec.writer)(Path(spec.output_path or ""), spec.metadata,
                                                      root=root)
                self.writer.open(counts["out_offset"])
            self.errors = ErrorLog(Path(spec.error_path), root=root)
            self.errors.open(counts["err_offset"])
        except BaseException:
            self.close()
            raise

    def reread(self, blobs: list[bytes]) -> list[bytes]:
        """Leases as Redis keeps them, with every ``Span`` turned into its items, read
        again from the input (attempts 0: a fresh lease's items were never tried)."""
        return [blob if (span := Span.unpack(blob)) is None else pack(
            (i, item, 0) for i, item in self._reread(span)) for blob in blobs]

    def _reread(self, span: Span) -> list[tuple[int, object]]:
        spec = self.spec
        reader = get_reader(spec.reader or "")(Path(spec.input_path or ""), spec.metadata,
                                              root=self.root)
        try:
            return reader.reread(Position(*span.start), Position(*span.end), span.good)
        except OSError as exc:  # a file problem, never to be taken for Redis failing
            raise FormatError(f"cannot read {spec.input_path} again: {exc}") from exc
        finally:
            reader.close()

    def close(self) -> None:
        for f in (self.reader, self.writer, self.errors):
            if f is not None:
                f.close()
        self.reader = self.writer = self.errors = None

    def append(self, output: list[bytes], errors: list[bytes],
               offsets: tuple[int, int]) -> tuple[int, int]:
        """Append and fsync output and error lines; the new (output, error) offsets."""
        out, err = offsets
        if output:
            assert self.writer is not None
            out = self.writer.append(b"".join(output))
        if errors:
            assert self.errors is not None
            err = self.errors.append(b"".join(errors))
        return out, err
