"""Server configuration, in one place: defaults, ``PLANCHET_*`` variables, then flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_PORT = 5005
PRIVATE_DIR = ".planchet"  # under the data dir: the embedded Redis; no job may write here


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

    @property
    def embedded_redis_dir(self) -> Path:
        return self.data_dir / PRIVATE_DIR / "redis"

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Defaults, overridden by ``PLANCHET_<FIELD>`` variables, overridden by flags."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"PLANCHET_{f.name.upper()}")
            if f.name == "redis_url":
                raw = env.get("PLANCHET_REDIS", raw)
            if f.name == "token":
                raw = raw or env.get("PLANCHET_MASTER_TOKEN")  # the original's name
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
        )
