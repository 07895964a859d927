"""One exception tree for the server and the clients.

Every error that crosses the wire has a ``code``: the server raises a subclass, the
protocol carries ``code`` and ``message``, and the client raises the same subclass
again, so ``except JobNotFound`` works on both sides of the socket.
"""

from __future__ import annotations


class PlanchetError(Exception):
    """Base of every error Planchet raises on purpose."""

    code = "error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)

    @property
    def message(self) -> str:
        return str(self)


class ProtocolError(PlanchetError):
    """A frame that is not a valid Planchet message."""

    code = "bad_message"


class BadFrame(ProtocolError):
    """A frame that is not JSON at all."""

    code = "bad_frame"


class MessageTooBig(ProtocolError):
    """A frame larger than the server accepts."""

    code = "too_big"


class AuthError(PlanchetError):
    """A missing or wrong token."""

    code = "unauthorized"


class BadRequest(PlanchetError):
    """A well-formed request that cannot be carried out as asked."""

    code = "bad_request"


class PathRefused(BadRequest):
    """A file path that leaves the server's data directory."""

    code = "path_refused"


class JobNotFound(BadRequest):
    """No job of that name."""

    code = "job_not_found"


class JobConflict(BadRequest):
    """The job exists with another spec, or its output file belongs to another job."""

    code = "job_conflict"


class FormatError(PlanchetError):
    """A reader or writer cannot open, read or write its file."""

    code = "format_error"


class CorruptInput(FormatError):
    """An input's data is corrupt or cut short (a gzip stream): reading it again cannot
    help, so the job waits for an operator instead of reopening by itself."""


class ServerError(PlanchetError):
    """The server failed in a way that is not the request's fault."""

    code = "server_error"


class Unavailable(ServerError):
    """Storage is down for a moment; nothing was changed. Results sent are dropped and
    their items requeued once the server has reloaded the job."""

    code = "unavailable"


class CircuitOpen(PlanchetError):
    """A worker failed every item of batch after batch of a job: it gets no more of them
    (the server cuts the connection off that job; the clients stop themselves sooner)."""

    code = "circuit_open"


class ConnectionLost(PlanchetError):
    """The client could not reach the server, even after retrying."""

    code = "connection_lost"


ERRORS_BY_CODE: dict[str, type[PlanchetError]] = {
    cls.code: cls
    for cls in (
        PlanchetError,
        ProtocolError,
        BadFrame,
        MessageTooBig,
        AuthError,
        BadRequest,
        PathRefused,
        JobNotFound,
        JobConflict,
        FormatError,
        ServerError,
        Unavailable,
        CircuitOpen,
        ConnectionLost,
    )
}


def error_from_code(code: str, message: str) -> PlanchetError:
    """Rebuild the exception a server error frame stands for."""
    return ERRORS_BY_CODE.get(code, PlanchetError)(message)
