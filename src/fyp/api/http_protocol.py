"""The HTTP/1.1 protocol ``fyp serve`` runs uvicorn with: errors found before the app runs are
problem documents too.

uvicorn's parser (httptools) refuses a request it cannot parse with a ``text/plain`` 400, before
the app sees it; it accepts a request target of up to about 80 KB, and header fields of any size
(a 100 MB header was read into memory whole). Here:

* a request target (path and query) longer than :data:`MAX_TARGET_BYTES` is refused as soon as
  the parser has handed over that many bytes of it: ``414`` ``urn:fyp:problem:uri-too-long``;
* a request head (request line and header fields) still incomplete after
  :data:`MAX_HEAD_BYTES` is refused: ``431`` ``urn:fyp:problem:request-header-fields-too-large``;
* any other request the parser refuses gets ``400`` ``urn:fyp:problem:bad-request``.

Each is ``application/problem+json`` like every other error. Nothing more of the request is
parsed or kept (at most one read from the socket past the limit). The connection then closes
the way careful servers close one on a client still sending: the answer goes out with a FIN,
and what keeps arriving is read and dropped, for at most :data:`LINGER_S` seconds and
:data:`LINGER_BYTES` bytes, because closing a socket with unread data makes the kernel send a
reset, which can destroy the answer before the client reads it. Ids are at most 128 characters,
so real fyp URLs are far below the limits. (Bodies are bounded by the app, ``fyp.api.app``.)
"""

from __future__ import annotations

import json
from typing import Final

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from fyp.api.problems import PROBLEM_JSON
from fyp.errors import PROBLEM_TYPE_PREFIX

MAX_TARGET_BYTES: Final = 8192
"""Longest request target (path and query string, as sent) served; 8 KiB like common proxies."""
MAX_HEAD_BYTES: Final = 64 * 1024
"""Longest request head (request line and every header field) served."""
LINGER_S: Final = 2.0
LINGER_BYTES: Final = 4 * 1024 * 1024
"""After a refusal, the connection drops what the client still sends for at most this long and
this much, then closes."""


class _TargetTooLong(Exception):
    """Raised inside the parser's URL callback: the parser stops with a callback error, which
    uvicorn answers through ``send_400_response``."""


def _problem_bytes(status: int, slug: str, title: str, detail: str) -> bytes:
    body = {"type": PROBLEM_TYPE_PREFIX + slug, "title": title, "status": status, "detail": detail}
    return json.dumps(body).encode()


class ProblemHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds on the request target and head, and
    problem-document answers to requests the parser refuses."""

    _refusal: tuple[int, str, str, str] | None = None
    _head_done = False
    """Between the end of a request's head and the end of its body."""
    _message_ended = False
    _head_bytes = 0
    """Bytes received while a head was incomplete (one read more or less, see data_received)."""

    _lingering = False
    _dropped = 0

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.close()
            return
        if not self._head_done:
            self._head_bytes += len(data)
        self._message_ended = False
        super().data_received(data)
        if self._head_done or self._message_ended:
            # The head ended in this read, or a request ended and the next one's head began in
            # it: count afresh (the new head's bytes in this read go uncounted, a bounded slack).
            self._head_bytes = 0
        elif self._head_bytes > MAX_HEAD_BYTES and not (
            self._lingering or self.transport.is_closing()  # already answered
        ):
            self._refusal = (
                431,
                "request-header-fields-too-large",
                "Request header fields too large",
                f"a request's line and header fields are limited to {MAX_HEAD_BYTES} bytes",
            )
            self.send_400_response("")

    def on_url(self, url: bytes) -> None:
        # The parser hands the target over in pieces (one per read from the socket): checking
        # the running length stops a long one after at most one read past the limit.
        if len(self.url) + len(url) > MAX_TARGET_BYTES:
            self._refusal = (
                414,
                "uri-too-long",
                "URI too long",
                f"request targets (path and query) are limited to {MAX_TARGET_BYTES} bytes",
            )
            raise _TargetTooLong
        super().on_url(url)

    def on_headers_complete(self) -> None:
        self._head_done = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head_done = False
        self._message_ended = True
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this for every parser error (a callback's exception is one of them).
        status, slug, title, detail = self._refusal or (400, "bad-request", "Bad request", msg)
        content = _problem_bytes(status, slug, title, detail)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: " + PROBLEM_JSON.encode() + b"\r\n",
            b"content-length: " + str(len(content)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + content)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._lingering = True
        self.loop.call_later(LINGER_S, self.transport.close)
