"""One error hierarchy; each error carries a neutral kind. Each front end translates kinds to its
own statuses in one table (grpc_api.STATUS, http_api's); anything else becomes an `InternalError`
whose message names the request id, with the traceback only in the log."""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    """How a call ended, named as the canonical codes HTTP and gRPC APIs share (google.rpc.Code),
    so the metrics' `code` label reads the same whichever front end answered."""

    OK = "OK"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"  # overloaded: retry later
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"  # the caller went away
    UNAUTHENTICATED = "UNAUTHENTICATED"
    INTERNAL = "INTERNAL"


def shown(value: str, limit: int = 100) -> str:
    """A client's string quoted for an error message: ASCII only and at most `limit` characters,
    so the status message (sent as a header) stays small whatever the client sent."""
    text = ascii(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(value)} characters)"


class EmbedderError(Exception):
    kind: Kind = Kind.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(EmbedderError):
    kind = Kind.INVALID_ARGUMENT


class InvalidImage(InvalidRequest):
    """An image that cannot be embedded; names the image's index in the request and the reason."""

    def __init__(self, reason: str, index: int | None = None, *, failure: str = "undecodable") -> None:
        self.reason = reason
        self.index = index
        self.failure = failure  # short label for metrics: undecodable, format, too_large, truncated, ...
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"image {self.index}" if self.index is not None else "image"
        return f"{where}: {self.reason}"

    def at(self, index: int) -> InvalidImage:
        """The same error, placed at `index` of the request."""
        return InvalidImage(self.reason, index, failure=self.failure)


class LimitExceeded(InvalidRequest):
    """A request over a configured limit; the message names the limit and its value."""


class RejectedItems(InvalidRequest):
    """Several images (or texts) of one request refused at once; each keeps its reason and failure label."""

    MAX_LISTED = 5

    def __init__(self, errors: list[InvalidRequest], items: str = "images") -> None:
        self.errors = errors
        shown = "; ".join(e.message for e in errors[: self.MAX_LISTED])
        more = len(errors) - self.MAX_LISTED
        super().__init__(
            f"{len(errors)} {items} rejected: {shown}" + (f" (and {more} more)" if more > 0 else "")
        )


def image_failures(error: EmbedderError | None) -> list[str]:
    """The failure label of every image an error refuses, for the decode-failure metric."""
    errors = error.errors if isinstance(error, RejectedItems) else [error]
    return [e.failure for e in errors if isinstance(e, InvalidImage)]


class ModelNotFound(EmbedderError):
    kind = Kind.NOT_FOUND


class ModelUnavailable(EmbedderError):
    """The model exists but cannot serve now (file missing, hash mismatch, load failed)."""

    kind = Kind.UNAVAILABLE


class Overloaded(EmbedderError):
    kind = Kind.RESOURCE_EXHAUSTED


class DeadlineExpired(EmbedderError):
    kind = Kind.DEADLINE_EXCEEDED


class ShuttingDown(EmbedderError):
    kind = Kind.UNAVAILABLE


class Unauthenticated(EmbedderError):
    kind = Kind.UNAUTHENTICATED


class InternalError(EmbedderError):
    """A fault of the server's own: the message names the request id and nothing of the cause."""

    kind = Kind.INTERNAL

    def __init__(self, request_id: str) -> None:
        super().__init__(f"internal error (request {request_id}); see the server log")
