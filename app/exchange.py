"""The neutral shapes a blueprint hands to a service and gets back: no Flask below this line."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from . import jsoncodec
from .errors import invalid_request
from .records import RequestRecord

if TYPE_CHECKING:
    from .services.access import Identity


@dataclass
class Incoming:
    """One client request, read once by the blueprint."""

    method: str
    path: str
    query_string: str
    host: str  # without port, lower-case
    headers: dict  # lower-case names
    body: bytes
    record: RequestRecord
    client_key: str | None = None  # the proxy's own client key, when access control matched one (never forwarded)
    identity: Identity | None = None  # what that key matched (app.services.access)
    # A client key's rules and limits (app/keys), applied by `admit` before any upstream call.
    admitter: Callable[[str | None], None] | None = None
    config: object = None  # the host's DomainConfig, resolved once per request

    def admit(self, model: str | None) -> None:
        """403/429 before the upstream is called, when the request's client key forbids it; else nothing."""
        if self.admitter is not None:
            self.admitter(model)

    def json(self) -> dict:
        """The body as a JSON object, or a 400 that says what is wrong."""
        if not self.body:
            raise invalid_request("Request body is empty; expected a JSON object")
        try:
            data = jsoncodec.loads(self.body)
        except ValueError as exc:
            try:
                self.body.decode("utf-8")
            except UnicodeDecodeError:
                raise invalid_request("Request body is not valid UTF-8") from None
            if str(exc) == "nested too deeply":
                raise invalid_request("Request body is nested too deeply") from None
            raise invalid_request(f"Request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise invalid_request("Request body must be a JSON object")
        return data


@dataclass
class Reply:
    """What the client gets: bytes, or an iterator of bytes relayed as they are produced.

    `on_close` runs once after the last byte went out (or the client went away): that is where
    the request is accounted, off the path of the answer.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes | Iterable[bytes]
    on_close: Callable[[], None] | None = None
    streaming: bool = False


JSON_HEADERS = (("content-type", "application/json"),)
SSE_HEADERS = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    # nginx would otherwise buffer the stream and the client would see it all at the end.
    ("x-accel-buffering", "no"),
)


def json_reply(status: int, data: Mapping | list, extra_headers: Iterable[tuple[str, str]] = (), on_close=None) -> Reply:
    return Reply(status, [*JSON_HEADERS, *extra_headers], jsoncodec.dumps_lenient(data), on_close)
