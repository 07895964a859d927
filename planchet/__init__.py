"""Planchet: dispatch the items of a large file to many workers, nothing lost or written twice."""

from .aclient import AsyncPlanchetClient, WorkBatch
from .client import PlanchetClient
from .exceptions import (
    AuthError,
    BadRequest,
    ConnectionLost,
    JobConflict,
    JobNotFound,
    PathRefused,
    PlanchetError,
    ProtocolError,
)
from .version import __version__

__all__ = [
    "AsyncPlanchetClient",
    "AuthError",
    "BadRequest",
    "ConnectionLost",
    "JobConflict",
    "JobNotFound",
    "PathRefused",
    "PlanchetClient",
    "PlanchetError",
    "ProtocolError",
    "WorkBatch",
    "__version__",
]
