"""The neutral shapes a blueprint hands to a service and gets back: no Flask below this line."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from app.errors import invalid_request
from app.jsonenc import compact_ascii
from app.records import RequestRecord

if TYPE_CHECKING:
    from app.services.access import Identity


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
    config: object = None  # the host's DomainConfig, resolved once per request

    def json(self) -> dict:
        """The body as a JSON object, or a 400 that says what is wrong."""
        if not self.body:
            raise invalid_request("Request body is empty; expected a JSON object")
        try:
            data = json.loads(self.body.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError:
            raise invalid_request("Request body is not valid UTF-8") from None
        except ValueError as exc:
            raise invalid_request(f"Request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise invalid_request("Request body is nested too deeply") from None
        if not isinstance(data, dict):
            raise invalid_request("Request body must be a JSON object")
        return data


def _reject_constant(name: str):
    # Python's json accepts NaN and Infinity; JSON does not, and upstreams answer them with odd errors.
    raise ValueError(f"{name} is not valid JSON")


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
    return Reply(status, [*JSON_HEADERS, *extra_headers], compact_ascii(data).encode(), on_close)
