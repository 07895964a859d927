"""gzip files, chosen by name: a job's input or output whose name ends in ``.gz``.

Input is streamed through decompression and every offset counts **uncompressed** bytes,
so a job's committed position means the same thing for ``in.jsonl`` and ``in.jsonl.gz``
and the readers need not know. gzip has no index: opening at an offset decompresses
from the start and drops what comes before it, in pieces of ``CHUNK`` bytes. A resume
thus costs O(offset) time (zlib inflates a few hundred MB/s) in bounded memory.

Output is appended one complete gzip member per write. Concatenated members are one
valid gzip stream (RFC 1952, section 2.2; ``gzip -dc`` and Python's ``gzip`` read them
all), so the file is valid after every append, and cutting it back to a committed
(compressed) offset, which always falls between members, leaves it valid too.
"""

from __future__ import annotations

import gzip
import io
import os
import pathlib
import zlib
from collections.abc import Callable
from typing import IO

from ..exceptions import CorruptInput, FormatError

CHUNK = 1 << 16
LEVEL = 6  # zlib's default: most of level 9's ratio at a fraction of its time


def is_gzip(path: pathlib.Path | str) -> bool:
    """Whether a job file is gzip: its name ends in ``.gz`` (any case)."""
    return pathlib.Path(path).suffix.lower() == ".gz"


def compress(data: bytes) -> bytes:
    """``data`` as one gzip member (no time stamp, so equal data compresses equally)."""
    return gzip.compress(data, compresslevel=LEVEL, mtime=0) if data else b""


class _Counted:
    """The compressed file as ``GzipFile`` pulls it, counting the bytes it has taken."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.consumed += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        raise io.UnsupportedOperation("a job's gzip input is read forward only")


class GzipInput:
    """The uncompressed bytes of a gzip file, read forward only, errors as FormatError.

    It offers what the readers use of a binary file (``read``, ``readline``, ``tell``,
    ``fileno``, ``close``) and owns ``file``, the opened compressed file.
    """

    def __init__(self, file: IO[bytes], path: pathlib.Path) -> None:
        self.path = path
        self._file = file
        self._raw = _Counted(file)
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="rb")
        self._position = 0
        self._last = b""  # the last byte handed out, to tell a line start
        self._call(self._gz.peek, 1)  # not gzip at all: say so when the file is opened

    def read(self, size: int = -1) -> bytes:
        return self._took(self._call(self._gz.read, size))

    def readline(self, size: int = -1) -> bytes:
        return self._took(self._call(self._gz.readline, size))

    def tell(self) -> int:
        """Uncompressed bytes handed out so far."""
        return self._position

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._gz.close()  # leaves the file it was given open
        self._file.close()

    def skip_to(self, offset: int) -> None:
        """Decompress up to ``offset`` and drop it; refuse an offset that no line starts at."""
        if offset < self._position:
            raise FormatError(f"offset {offset} is behind the read position of {self.path}")
        while self._position < offset:
            if not self.read(min(CHUNK, offset - self._position)):
                raise FormatError(f"offset {offset} is outside {self.path} "
                                  f"({self._position} bytes uncompressed)")
        if self._position and self._last != b"\n" and self._call(self._gz.peek, 1):
            raise FormatError(f"offset {offset} is not at the start of a line in {self.path}")

    def estimated_size(self) -> int:
        """The uncompressed size, judged by the ratio so far; exact once all is read.

        Offsets count uncompressed bytes, so a report's share read and ETA need the total
        in the same unit: the compressed size times the ratio seen (before any data is
        read, the compressed size itself).
        """
        size = os.fstat(self.fileno()).st_size
        taken, given = self._raw.consumed, self._position
        if taken >= size > 18:  # all of it pulled into the decompressor's buffer at once:
            trailer = os.pread(self.fileno(), 4, size - 4)  # the ratio says nothing; the
            return max(given, int.from_bytes(trailer, "little"))  # last member's ISIZE does
        if not taken or not given:
            return size
        return max(given, round(size * given / taken))

    def _took(self, data: bytes) -> bytes:
        if data:
            self._position += len(data)
            self._last = data[-1:]
        return data

    def _call(self, method: Callable[[int], bytes], size: int) -> bytes:
        try:
            return method(size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise CorruptInput(f"{self.path} is not a valid gzip file: {exc}") from exc
        except OSError as exc:
            raise FormatError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
