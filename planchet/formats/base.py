"""Shared contract of the streaming readers and writers.

The server keeps a read ``Position`` and a committed output offset in Redis. On restart
a reader seeks straight to the position and a writer truncates back to the offset, so
offsets here are always exact byte counts in the file, never character counts.

Every open goes through ``files.open_fd``: given the data directory as ``root``, the
path is checked again each time, a final symlink is refused and so is anything that is
not a regular file. A reader caps record length, so no file can make it hold more than
``max_line_bytes`` of one record in memory.

A ``.gz`` file is read and written through ``formats.gz``: input offsets then count
uncompressed bytes, output offsets compressed ones (each append is one gzip member).
"""

from __future__ import annotations

import abc
import contextlib
import os
import pathlib
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple, cast

from planchet.exceptions import BadRequest, FormatError
from planchet.formats.files import check_regular, open_fd
from planchet.formats.gz import GzipInput, compress, is_gzip

READ_BUFFER = 1 << 16
MAX_LINE_BYTES = 16 * 2**20


class Position(NamedTuple):
    """Where reading resumes: the id the next record gets and the byte it starts at."""

    next_id: int
    offset: int


START = Position(0, 0)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One batch from a reader: good items, bad records, and where the next batch starts.

    ``ends`` holds the end offset of every record of the chunk, good or bad, in id order
    (the first record's id is ``position.next_id - len(ends)``), so a reader's output can
    be leased a part at a time, each part with its exact resume position.
    """

    items: list[tuple[int, Any]]
    errors: list[tuple[int, str]]
    position: Position
    ends: list[int] = field(default_factory=list, compare=False)


class Reader(abc.ABC):
    """Streams records from one file so memory stays flat however large the file is.

    A malformed record is reported in ``Chunk.errors`` and still uses up an id, so ids
    stay tied to the file layout and a resumed job numbers records as a fresh one would.
    """

    # A chunk also ends after this many errors, so a garbage file cannot fill memory.
    max_errors = 1000

    def __init__(
        self,
        path: pathlib.Path,
        metadata: dict,
        *,
        root: pathlib.Path | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        if max_line_bytes < 1:
            raise BadRequest(f"max_line_bytes must be positive, got {max_line_bytes}")
        self.path = pathlib.Path(path)
        self.metadata = dict(metadata or {})
        self.root = root
        self.max_line_bytes = max_line_bytes
        self._file: IO[bytes] | None = None
        self._gzip: GzipInput | None = None  # the same stream as ``_file``, if gzip
        self._next_id = 0
        self._offset = 0
        self._probe = bytearray()  # scratch for ``cached``
        # whether ``reread`` is cheap, a seek: gzip has no index, so it would inflate
        # everything before the records
        self.rereadable = not is_gzip(self.path)

    @abc.abstractmethod
    def open(self, position: Position = START) -> None:
        """Open the file and seek to ``position`` without reading what comes before."""

    @abc.abstractmethod
    def read(self, n: int) -> Chunk:
        """Read up to ``n`` good items; an empty chunk means end of file."""

    def reread(self, start: Position, end: Position, good: int) -> list[tuple[int, Any]]:
        """The good items of the records from ``start`` up to ``end``, as they were read
        the first time: ``good`` of them, and the last record must end at ``end.offset``.
        FormatError if not: the file has changed under the job."""
        self.open(start)
        items: list[tuple[int, Any]] = []
        next_id = start.next_id
        while next_id < end.next_id:
            chunk = self.read(end.next_id - next_id)
            if not chunk.ends:
                break
            first, next_id = chunk.position.next_id - len(chunk.ends), chunk.position.next_id
            items += [(i, item) for i, item in chunk.items if i < end.next_id]
            if next_id >= end.next_id:
                if chunk.ends[end.next_id - 1 - first] != end.offset or len(items) != good:
                    break
                return items
        raise FormatError(f"{self.path} has changed under the job: records {start.next_id}"
                          f" to {end.next_id - 1} are no longer where they were read")

    def size(self) -> int:
        """Current file size in bytes, for progress reports (a gzip file's uncompressed
        size, estimated: offsets count uncompressed bytes)."""
        if self._file is None:
            return check_regular(self.path, self.root)
        try:
            gz = self._gzip
            if gz is not None:
                return gz.estimated_size()
            return os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            raise FormatError(f"cannot stat {self.path}: {exc.strerror or exc}") from exc

    def cached(self, nbytes: int) -> bool:
        """Whether the next ``nbytes`` of the file (or all that is left of it) are in the
        page cache, so that reading them cannot wait for the disk: an ``RWF_NOWAIT`` read
        of them says so. False when it cannot tell: a gzip file, or no ``RWF_NOWAIT``."""
        nowait = getattr(os, "RWF_NOWAIT", None)
        if self._file is None or self._gzip is not None or nowait is None:
            return False
        try:
            fd = self._file.fileno()
            want = min(nbytes, os.fstat(fd).st_size - self._offset)
            if want <= 0:
                return True  # at the end: a read returns at once
            if len(self._probe) < want:
                self._probe = bytearray(want)
            return os.preadv(fd, [memoryview(self._probe)[:want]], self._offset, nowait) == want
        except OSError:  # EAGAIN: not all cached; anything else, the read will say
            return False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._gzip = None
        self._probe = bytearray()

    def _open_at(self, offset: int) -> IO[bytes]:
        """Open for binary reading at ``offset``, refusing offsets the file cannot have.

        A gzip file comes back as its uncompressed stream (``GzipInput``, which has the
        methods of a binary file the readers use), decompressed up to ``offset``.
        """
        self.close()
        file = os.fdopen(open_fd(self.path, self.root, os.O_RDONLY), "rb", READ_BUFFER)
        stream: IO[bytes] = file
        try:
            if is_gzip(self.path):
                self._gzip = GzipInput(file, self.path)
                stream = cast(IO[bytes], self._gzip)
            self._file = stream
            self._move(stream, offset)
        except BaseException:
            file.close()
            self._file = self._gzip = None
            raise
        return stream

    def _move(self, file: IO[bytes], offset: int) -> None:
        """Put the open ``file`` at ``offset``, refusing offsets no record starts at."""
        if self._gzip is not None:
            self._gzip.skip_to(offset)
        else:
            check_offset(file, offset, self.path)
            file.seek(offset)

    def _opened(self) -> IO[bytes]:
        if self._file is None:
            raise FormatError(f"reader for {self.path} is not open")
        return self._file


def skip_line(file: IO[bytes]) -> int:
    """Read past the rest of a line in bounded pieces; return the bytes skipped."""
    skipped = 0
    while True:
        part = file.readline(READ_BUFFER)
        skipped += len(part)
        if not part or part.endswith(b"\n"):
            return skipped


def check_offset(file: IO[bytes], offset: int, path: pathlib.Path) -> None:
    """A resume offset past the end or mid-line means the file is not the one we read."""
    size = os.fstat(file.fileno()).st_size
    if offset < 0 or offset > size:
        raise FormatError(f"offset {offset} is outside {path} ({size} bytes)")
    if 0 < offset < size:
        file.seek(offset - 1)
        if file.read(1) != b"\n":
            raise FormatError(f"offset {offset} is not at the start of a line in {path}")


class AppendOnlyFile:
    """A file that only grows by whole fsynced batches and is cut back on reopen.

    Bytes past the committed offset come from a crash before the commit, so ``open``
    drops them; a file shorter than the offset has lost committed data, so it refuses.
    """

    def __init__(
        self, path: pathlib.Path, metadata: dict | None = None, *, root: pathlib.Path | None = None
    ) -> None:
        self.path = pathlib.Path(path)
        self.metadata = dict(metadata or {})
        self.root = root
        self._file: IO[bytes] | None = None
        self._offset = 0

    @property
    def offset(self) -> int:
        """Bytes in the file after the last write."""
        return self._offset

    def open(self, offset: int) -> None:
        """Create the file if missing (not its directory) and truncate it to ``offset``."""
        self.close()
        existed = os.path.lexists(self.path)
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
        file = os.fdopen(open_fd(self.path, self.root, flags), "r+b", buffering=0)
        try:
            size = os.fstat(file.fileno()).st_size
            if offset < 0 or offset > size:
                raise FormatError(
                    f"{self.path} has {size} bytes but {offset} were committed: output lost"
                )
            if offset < size:
                file.truncate(offset)
                os.fsync(file.fileno())
            if not existed:
                _fsync_dir(self.path.parent)
        except OSError as exc:
            file.close()
            raise FormatError(f"cannot truncate {self.path}: {exc.strerror or exc}") from exc
        except BaseException:
            file.close()
            raise
        self._file = file
        self._offset = offset

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def append(self, data: bytes) -> int:
        """One write of ``data``, flushed and fsynced before the offset is handed out."""
        if self._file is None:
            raise FormatError(f"{self.path} is not open for writing")
        if not data:
            return self._offset
        fd = self._file.fileno()
        try:
            view = memoryview(data)
            while view:  # unbuffered: a short write is retried, nothing lingers in a buffer
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            self._cut_back()
            raise FormatError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._offset += len(data)
        return self._offset

    def _cut_back(self) -> None:
        """After a failed write, drop its partial bytes so offsets keep matching the file."""
        with contextlib.suppress(OSError):
            os.ftruncate(self._file.fileno(), self._offset)  # type: ignore[union-attr]


def _fsync_dir(directory: pathlib.Path) -> None:
    """Make a newly created file's directory entry durable too."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


OUTPUT_STYLES = ("envelope", "bare")


def is_bare(metadata: dict) -> bool:
    """``metadata["output"]``: ``"envelope"`` (the default) or ``"bare"``; BadRequest else."""
    style = metadata.get("output", "envelope")
    if not isinstance(style, str) or style not in OUTPUT_STYLES:
        raise BadRequest(f'metadata "output" must be "envelope" or "bare", got {style!r}')
    return style == "bare"


class Writer(AppendOnlyFile, abc.ABC):
    """Appends results; the returned offset is what the server commits to Redis.

    Results are written in an envelope that keeps their id, or bare (``is_bare``). A
    ``.gz`` output gets each append as one gzip member, so offsets count compressed
    bytes and every committed offset ends a member.
    """

    def __init__(
        self, path: pathlib.Path, metadata: dict | None = None, *, root: pathlib.Path | None = None
    ) -> None:
        super().__init__(path, metadata, root=root)
        self.bare = is_bare(self.metadata)
        self.compressed = is_gzip(self.path)

    def append(self, data: bytes) -> int:
        """Append ``data`` (one gzip member of it, for a ``.gz`` output), fsynced."""
        return super().append(compress(data) if self.compressed else data)

    @abc.abstractmethod
    def encode(self, items: list[tuple[int, Any]]) -> tuple[bytes, list[tuple[int, str]]]:
        """The bytes that append ``items`` (in order), and the items that cannot be written.

        Encoding may move the writer's own state on (a CSV header is due once), so the
        bytes must be appended, in order, before the next ``encode``.
        """

    def write(self, items: list[tuple[int, Any]]) -> tuple[int, list[tuple[int, str]]]:
        """Encode all items, append the good ones at once; return (new offset, failures)."""
        data, failures = self.encode(items)
        return self.append(data), failures
