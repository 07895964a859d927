"""Every open checks its path again: no final symlink, nothing outside the data dir, no FIFO."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from planchet.exceptions import FormatError
from planchet.formats import (
    CsvReader,
    CsvWriter,
    ErrorLog,
    JsonlReader,
    JsonlWriter,
    check_regular,
)

Opener = Callable[[Path, Path | None], Any]


def open_jsonl_reader(path: Path, root: Path | None) -> Any:
    reader = JsonlReader(path, {}, root=root)
    reader.open()
    return reader


def open_csv_reader(path: Path, root: Path | None) -> Any:
    reader = CsvReader(path, {}, root=root)
    reader.open()
    return reader


def open_jsonl_writer(path: Path, root: Path | None) -> Any:
    writer = JsonlWriter(path, {}, root=root)
    writer.open(0)
    return writer


def open_csv_writer(path: Path, root: Path | None) -> Any:
    writer = CsvWriter(path, {}, root=root)
    writer.open(0)
    return writer


def open_error_log(path: Path, root: Path | None) -> Any:
    log = ErrorLog(path, root=root)
    log.open(0)
    return log


READERS = [open_jsonl_reader, open_csv_reader]
WRITERS = [open_jsonl_writer, open_csv_writer, open_error_log]
ALL = READERS + WRITERS


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the data directory that no job may read or touch."""
    path = tmp_path / "secret.csv"
    path.write_bytes(b"a,b\n1,2\n")
    return path


@pytest.mark.parametrize("opener", ALL)
def test_a_file_swapped_for_a_link_outside_is_refused_on_reopen(
    data_dir: Path, secret: Path, opener: Opener
) -> None:
    """A path that was fine when the job started is checked again when the file is reopened."""
    path = data_dir / "f.csv"
    path.write_bytes(b"a,b\n")
    opener(path, data_dir).close()
    path.unlink()
    path.symlink_to(secret)
    with pytest.raises(FormatError, match=r"f\.csv.*symbolic link"):
        opener(path, data_dir)
    assert secret.read_bytes() == b"a,b\n1,2\n"


@pytest.mark.parametrize("opener", ALL)
def test_a_final_link_is_never_followed_even_inside(data_dir: Path, opener: Opener) -> None:
    """O_NOFOLLOW: a link in place of the file is refused even when it points inside."""
    (data_dir / "real.csv").write_bytes(b"a,b\n")
    (data_dir / "alias.csv").symlink_to(data_dir / "real.csv")
    for root in (data_dir, None):
        with pytest.raises(FormatError, match="symbolic link"):
            opener(data_dir / "alias.csv", root)
    assert (data_dir / "real.csv").read_bytes() == b"a,b\n"


@pytest.mark.parametrize("opener", WRITERS)
def test_a_dangling_link_is_not_created_through(
    tmp_path: Path, data_dir: Path, opener: Opener
) -> None:
    """A writer never creates the file a planted dangling link points at."""
    (data_dir / "out.jsonl").symlink_to(tmp_path / "planted.jsonl")
    with pytest.raises(FormatError, match="symbolic link"):
        opener(data_dir / "out.jsonl", data_dir)
    assert not (tmp_path / "planted.jsonl").exists()


@pytest.mark.parametrize("opener", ALL)
def test_a_directory_swapped_for_a_link_outside_is_refused(
    tmp_path: Path, data_dir: Path, opener: Opener
) -> None:
    """The directories are resolved at each open and must stay inside the data dir."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.csv").write_bytes(b"a,b\n1,2\n")
    (data_dir / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(FormatError, match=r"f\.csv.*outside the data directory"):
        opener(data_dir / "sub" / "f.csv", data_dir)
    assert (outside / "f.csv").read_bytes() == b"a,b\n1,2\n"


@pytest.mark.parametrize("opener", ALL)
def test_the_private_directory_is_refused_at_open(data_dir: Path, opener: Opener) -> None:
    """The server's own .planchet directory is off limits at open time too, even via a link."""
    private = data_dir / ".planchet"
    private.mkdir()
    (private / "f.csv").write_bytes(b"a,b\n")
    (data_dir / "innocent").symlink_to(private, target_is_directory=True)
    for path in (private / "f.csv", data_dir / "innocent" / "f.csv"):
        with pytest.raises(FormatError, match=r"\.planchet directory"):
            opener(path, data_dir)


@pytest.mark.parametrize("opener", ALL)
def test_a_symlinked_data_dir_still_works(tmp_path: Path, data_dir: Path, opener: Opener) -> None:
    """The data directory itself may be a link; the check compares resolved paths."""
    (data_dir / "f.csv").write_bytes(b"a,b\n")
    link = tmp_path / "link-to-data"
    link.symlink_to(data_dir, target_is_directory=True)
    opener(data_dir.resolve() / "f.csv", link).close()
    opener(link / "f.csv", link).close()


@pytest.mark.parametrize("opener", ALL)
def test_a_fifo_is_refused_without_blocking(data_dir: Path, opener: Opener) -> None:
    """A FIFO in place of a file is refused at once instead of blocking open() forever."""
    fifo = data_dir / "f.csv"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            opener(fifo, data_dir).close()
            outcome.append(None)
        except BaseException as exc:  # handed over to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout=30)
    if thread.is_alive():  # unblock the stuck open() so the thread can end, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=30)
        pytest.fail("open() blocked on a FIFO")
    assert len(outcome) == 1
    assert isinstance(outcome[0], FormatError)
    assert "FIFO" in str(outcome[0]) and "f.csv" in str(outcome[0])


@pytest.mark.parametrize("opener", ALL)
def test_a_directory_is_refused(data_dir: Path, opener: Opener) -> None:
    """A directory where a file should be is a clear FormatError, not an odd OSError."""
    (data_dir / "f.csv").mkdir()
    with pytest.raises(FormatError, match=r"f\.csv.*directory"):
        opener(data_dir / "f.csv", data_dir)


@pytest.mark.parametrize("root_is_data_dir", [True, False])
def test_an_input_linked_to_dev_zero_is_refused(data_dir: Path, root_is_data_dir: bool) -> None:
    """An input swapped for a link to /dev/zero is never read, with or without a root."""
    path = data_dir / "in.jsonl"
    path.write_bytes(b"1\n")
    open_jsonl_reader(path, data_dir).close()
    path.unlink()
    path.symlink_to("/dev/zero")
    with pytest.raises(FormatError, match=r"in\.jsonl"):
        open_jsonl_reader(path, data_dir if root_is_data_dir else None)


def test_check_regular_gives_the_size_of_a_regular_file(data_dir: Path) -> None:
    """check_regular returns the size of a plain file inside the root."""
    (data_dir / "in.jsonl").write_bytes(b"1\n22\n")
    assert check_regular(data_dir / "in.jsonl", data_dir) == 5
    assert check_regular(data_dir / "in.jsonl", None) == 5


def test_check_regular_refuses_what_open_would_refuse(
    tmp_path: Path, data_dir: Path, secret: Path
) -> None:
    """Missing, linked, special or outside files are FormatErrors, and nothing is opened."""
    (data_dir / "link.jsonl").symlink_to(data_dir / "real.jsonl")
    (data_dir / "real.jsonl").write_bytes(b"1\n")
    os.mkfifo(data_dir / "fifo.jsonl")
    (data_dir / "dir.jsonl").mkdir()
    cases = {
        data_dir / "missing.jsonl": "no such file",
        data_dir / "link.jsonl": "symbolic link",
        data_dir / "fifo.jsonl": "FIFO",
        data_dir / "dir.jsonl": "directory",
        secret: "outside the data directory",
        data_dir / ".." / secret.name: "outside the data directory",
    }
    for path, reason in cases.items():
        with pytest.raises(FormatError, match=reason):
            check_regular(path, data_dir)


def test_reader_size_before_open_follows_no_link(data_dir: Path, secret: Path) -> None:
    """Reader.size() before open uses the same check, so it never stats a link's target."""
    (data_dir / "in.jsonl").symlink_to(secret)
    with pytest.raises(FormatError, match="symbolic link"):
        JsonlReader(data_dir / "in.jsonl", {}, root=data_dir).size()
