"""Planchet: dispatch the items of a large file to many workers, nothing lost or written twice."""

__version__ = "1.0.0"

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
