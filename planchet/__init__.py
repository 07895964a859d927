"""Planchet: dispatch the items of a large file to many workers, nothing lost or written twice."""

from .aclient import AsyncPlanchetClient, WorkBatch
from .client import PlanchetClient
from .exceptions import (
    AuthError,
    BadRequest,
    CircuitOpen,
    ConnectionLost,
    JobConflict,
    JobNotFound,
    PathRefused,
    PlanchetError,
    ProtocolError,
)
from .progress import Progress, TqdmBar
from .version import __version__

__all__ = [
    "AsyncPlanchetClient",
    "AuthError",
    "BadRequest",
    "CircuitOpen",
    "ConnectionLost",
    "JobConflict",
    "JobNotFound",
    "PathRefused",
    "PlanchetClient",
    "PlanchetError",
    "Progress",
    "ProtocolError",
    "TqdmBar",
    "WorkBatch",
    "__version__",
]
