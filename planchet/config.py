"""Server configuration, in one place: defaults, ``PLANCHET_*`` variables, then flags."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_PORT = 5005
PRIVATE_DIR = ".planchet"  # under the data dir: the embedded Redis; no job may write here

# the variables a field is read from, first set wins; any other field: PLANCHET_<FIELD>
ENV_NAMES = {
    "redis_url": ("PLANCHET_REDIS", "PLANCHET_REDIS_URL"),
    "token": ("PLANCHET_TOKEN", "PLANCHET_MASTER_TOKEN"),  # the original's name, second
    "allow_origins": ("PLANCHET_ALLOW_ORIGIN",),  # comma-separated
}


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path(".")
    redis_url: str | None = None  # None: start a private redis-server under data_dir
    token: str | None = None  # the master token, for server-wide operations
    max_message_bytes: int = 16 * 2**20
    key_prefix: str = "planchet:"
    tick: float = 1.0  # how often leases are checked for expiry, in seconds
    # a worker that vanishes sooner than this after being given a batch is not charged for it
    crash_grace: float = 1.0
    compression: bool = False  # permessage-deflate on WebSocket frames, for slow links
    # web pages (Origin headers) allowed besides loopback and the server's own; "*": any
    allow_origins: tuple[str, ...] = ()
    max_connections: int = 1000  # open WebSocket connections; past it an upgrade gets 503
    max_pending_connections: int = 100  # of those, not yet past hello; the oldest give way
    # a resumable session that drops keeps its leases this long for a reconnect to take back
    resume_grace: float = 10.0
    tls_cert: Path | None = None  # with tls_key: serve wss:// and https://
    tls_key: Path | None = None
    pages_dir: Path | None = None  # a directory of the user's own files, served at /pages/
    # a connection whose last this many batches of a job each failed on every item (the
    # worker's own errors, nothing written) gets no more of that job; 0: never cut off
    max_failing_batches: int = 5

    @property
    def embedded_redis_dir(self) -> Path:
        return self.data_dir / PRIVATE_DIR / "redis"

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Defaults, overridden by ``PLANCHET_<FIELD>`` variables, overridden by flags."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            names = ENV_NAMES.get(f.name, (f"PLANCHET_{f.name.upper()}",))
            raw = next((env[name] for name in names if env.get(name)), None)
            if raw:
                values[f.name] = raw
        values.update({k: v for k, v in flags.items() if v is not None})
        settings = replace(cls(), **values)
        return replace(
            settings,
            port=int(settings.port),
            data_dir=Path(settings.data_dir).resolve(),
            max_message_bytes=int(settings.max_message_bytes),
            tick=float(settings.tick),
            crash_grace=float(settings.crash_grace),
            compression=_flag(settings.compression),
            allow_origins=_origins(settings.allow_origins),
            max_connections=int(settings.max_connections),
            max_pending_connections=int(settings.max_pending_connections),
            resume_grace=float(settings.resume_grace),
            tls_cert=_path(settings.tls_cert),
            tls_key=_path(settings.tls_key),
            pages_dir=_path(settings.pages_dir),
            max_failing_batches=max(0, int(settings.max_failing_batches)),
        )


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value).resolve()


def _origins(value: str | Iterable[str]) -> tuple[str, ...]:
    """A comma-separated variable, or the values of a repeated flag, as a tuple."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in items if item.strip())


def _flag(value: bool | str) -> bool:
    """A flag, or a variable such as ``PLANCHET_COMPRESSION=1`` (``0``/``no``/``off``: off)."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "no", "off", "false")
    return bool(value)
