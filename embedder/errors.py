"""One error hierarchy; each error carries its gRPC status. The servicer is the one place that
translates them; anything else becomes a plain INTERNAL with the traceback logged."""

from __future__ import annotations

import grpc


def shown(value: str, limit: int = 100) -> str:
    """A client's string quoted for an error message: ASCII only and at most `limit` characters,
    so the status message (sent as a header) stays small whatever the client sent."""
    text = ascii(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}... ({len(value)} characters)"


class EmbedderError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(EmbedderError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidImage(InvalidRequest):
    """An image that cannot be embedded; names the image's index in the request and the reason."""

    def __init__(self, reason: str, index: int | None = None, *, kind: str = "undecodable") -> None:
        self.reason = reason
        self.index = index
        self.kind = kind  # short label for metrics: undecodable, format, too_large, truncated, ...
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"image {self.index}" if self.index is not None else "image"
        return f"{where}: {self.reason}"

    def at(self, index: int) -> InvalidImage:
        """The same error, placed at `index` of the request."""
        return InvalidImage(self.reason, index, kind=self.kind)


class LimitExceeded(InvalidRequest):
    """A request over a configured limit; the message names the limit and its value."""


class RejectedItems(InvalidRequest):
    """Several images (or texts) of one request refused at once; each keeps its reason and kind."""

    MAX_LISTED = 5

    def __init__(self, errors: list[InvalidRequest], items: str = "images") -> None:
        self.errors = errors
        shown = "; ".join(e.message for e in errors[: self.MAX_LISTED])
        more = len(errors) - self.MAX_LISTED
        super().__init__(
            f"{len(errors)} {items} rejected: {shown}" + (f" (and {more} more)" if more > 0 else "")
        )


def image_kinds(error: EmbedderError | None) -> list[str]:
    """The kind of every image an error refuses, for the decode-failure metric."""
    errors = error.errors if isinstance(error, RejectedItems) else [error]
    return [e.kind for e in errors if isinstance(e, InvalidImage)]


class ModelNotFound(EmbedderError):
    code = grpc.StatusCode.NOT_FOUND


class ModelUnavailable(EmbedderError):
    """The model exists but cannot serve now (file missing, hash mismatch, load failed)."""

    code = grpc.StatusCode.UNAVAILABLE


class Overloaded(EmbedderError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExpired(EmbedderError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ShuttingDown(EmbedderError):
    code = grpc.StatusCode.UNAVAILABLE
