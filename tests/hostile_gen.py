"""Hostile HTTP/1.1 traffic for tests/test_hostile.py: generated request scripts, a driver that
plays many of them at once over raw non-blocking sockets, and a checker for what came back.

A :class:`Script` is what one client does: the bytes it sends (one or more requests, clean or
malformed, concatenated and cut into pieces at random offsets, each piece its own ``send``)
and how it ends: read until the server closes (or goes quiet), half-close then read, reset
(SO_LINGER 0, so ``close`` sends RST), or close without reading.  :func:`run_batch` plays a
list of scripts with 8-32 sockets in flight at once, interleaving their sends so that
connections interfere; every socket is bounded by a deadline.  :func:`check` compares the
answers with what the same requests got when sent alone (``expected`` statuses measured by
the test): the clean requests before the first malformed one must be answered in order with
those statuses, nothing may be answered after a request that asked to close, and no answer
may be a 5xx.

Everything is generated from a ``random.Random`` the caller seeds, so a failure is replayed
by re-running with the same seed.
"""

from __future__ import annotations

import errno
import re
import selectors
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from random import Random

SOCKET_TIMEOUT = 2.0  # seconds any one scripted connection may live
IDLE = 0.25  # seconds of silence after which a keep-alive read is over

# --- clean requests --------------------------------------------------------------------------

# kind -> (method, path, body key in ``bodies`` or None, weight)
CLEAN: dict[str, tuple[str, str, str | None, int]] = {
    "get_ping": ("GET", "/ping", None, 10),
    "get_health": ("GET", "/health", None, 5),
    "get_ready": ("GET", "/ready", None, 5),
    "get_model": ("GET", "/model", None, 3),
    "get_metrics": ("GET", "/metrics", None, 3),
    "get_openapi": ("GET", "/openapi.json", None, 3),
    "head_ping": ("HEAD", "/ping", None, 4),
    "head_health": ("HEAD", "/health", None, 2),
    "head_ready": ("HEAD", "/ready", None, 2),
    "head_model": ("HEAD", "/model", None, 2),
    "head_metrics": ("HEAD", "/metrics", None, 1),
    "head_openapi": ("HEAD", "/openapi.json", None, 2),
    "post_one": ("POST", "/predict", "one", 10),
    "post_three": ("POST", "/predict", "three", 5),
    "post_columns": ("POST", "/predict", "columns", 2),
    "post_bad_json": ("POST", "/predict", "bad_json", 4),
    "post_wrong_fields": ("POST", "/predict", "wrong_fields", 4),
    "post_no_rows": ("POST", "/predict", "no_rows", 2),
    "post_non_utf8": ("POST", "/predict", "non_utf8", 2),
    "post_hundred": ("POST", "/predict", "hundred", 1),  # > 64 rows: answered by a worker thread
    "post_reload": ("POST", "/admin/reload", "empty", 1),  # a worker thread too (403: no token)
    "get_unknown": ("GET", "/nope", None, 2),
    "get_predict": ("GET", "/predict", None, 1),
    "post_health": ("POST", "/health", "empty_object", 1),
}
_KINDS = list(CLEAN)
_WEIGHTS = [CLEAN[k][3] for k in _KINDS]


@dataclass(frozen=True)
class Req:
    """One request of a script.  ``kind`` None: malformed (anything may follow its answer)."""

    data: bytes
    kind: str | None
    method: str = "GET"
    closes: str = "no"  # "yes": the server must close after answering it; "maybe": it may


def _case(rng: Random, name: str) -> str:
    return rng.choice([name, name.lower(), name.upper()]) if rng.random() < 0.3 else name


def chunked(rng: Random, body: bytes) -> bytes:
    """``body`` in random-sized chunks (hex sizes in either case, sometimes an extension)."""
    out, i = [], 0
    while i < len(body):
        n = rng.randint(1, max(1, min(len(body) - i, rng.choice([1, 7, 64, 700, 5000]))))
        size = f"{n:x}" if rng.random() < 0.5 else f"{n:X}"
        ext = ";a=b" if rng.random() < 0.05 else ""
        out.append(f"{size}{ext}\r\n".encode() + body[i:i + n] + b"\r\n")
        i += n
    return b"".join(out) + b"0\r\n\r\n"


def clean(rng: Random, bodies: dict[str, bytes], *, kind: str | None = None, close: bool | None = None) -> Req:
    """A well-formed request of ``kind`` (random when None), framed in one of several ways."""
    kind = kind or rng.choices(_KINDS, _WEIGHTS)[0]
    method, path, body_key, _ = CLEAN[kind]
    http10 = close is None and rng.random() < 0.1
    headers: list[tuple[str, str]] = []
    if rng.random() < 0.9:
        headers.append((_case(rng, "Host"), "t"))
    body = b""
    if body_key is not None:
        body = bodies[body_key]
        if not http10 and rng.random() < 0.2:
            headers.append((_case(rng, "Transfer-Encoding"), "chunked"))
            body = chunked(rng, body)
        else:
            headers.append((_case(rng, "Content-Length"), str(len(body))))
        if rng.random() < 0.5:
            headers.append(("Content-Type", "application/json"))
        if not http10 and rng.random() < 0.1:
            headers.append((_case(rng, "Expect"), "100-continue"))
    if http10:
        keep = rng.random() < 0.5
        if keep:
            headers.append((_case(rng, "Connection"), rng.choice(["keep-alive", "Keep-Alive"])))
        closes = "maybe" if keep else "yes"
    else:
        if close is None:
            close = rng.random() < 0.07
        if close:
            headers.append((_case(rng, "Connection"), rng.choice(["close", "Close"])))
        closes = "yes" if close else "no"
    for _ in range(rng.choice([0, 0, 1, 2, 5])):
        headers.append(rng.choice([("User-Agent", "hostile/1.0"), ("Accept", "*/*"), ("X-Trace", str(rng.random())),
                                   ("Accept-Encoding", "gzip, br"), ("X-Empty", "")]))
    rng.shuffle(headers)
    head = f"{method} {path} HTTP/{'1.0' if http10 else '1.1'}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return Req(head.encode() + b"\r\n" + body, kind, method, closes)


# --- malformed requests ----------------------------------------------------------------------

_PING_HEAD = b"GET /ping HTTP/1.1\r\nHost: t\r\n"
_POST_CHUNKED = b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"

BAD_REQUEST_LINES: list[bytes] = [
    b"GET\r\n\r\n", b"GET /ping\r\n\r\n", b"GET /ping HTTP/9.9\r\n\r\n", b"GET /ping HTTP/1.1 extra\r\n\r\n",
    b"GET  /ping HTTP/1.1\r\n\r\n", b"get /ping HTTP/1.1\r\n\r\n", b"G\x00T /ping HTTP/1.1\r\n\r\n",
    b"GET /pi ng HTTP/1.1\r\n\r\n", b"GET ping HTTP/1.1\r\n\r\n", b"GET http://t/ping HTTP/1.1\r\nHost: t\r\n\r\n",
    b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
    b"TRACE / HTTP/1.1\r\nHost: t\r\n\r\n", b"BREW /pot HTTP/1.1\r\n\r\n", b"A" * 300 + b" / HTTP/1.1\r\n\r\n",
    b"GET /ping HTTP/1.1\n\n", b"GET /ping HTTP/1.1\rHost: t\r\r", b"\r\n\r\nGET /ping HTTP/1.1\r\n\r\n",
    b"GET /%zz HTTP/1.1\r\n\r\n", b"GET /ping?" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n", b"GET /ping#f HTTP/1.1\r\n\r\n",
    b"GET /ping HTTP/1.1\r\n", b"GET /ping HTTP/1.\r\n\r\n", b"GET /ping HTTP/01.1\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"PUT /predict HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    b"DELETE /model HTTP/1.1\r\n\r\n", b"PATCH /predict HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"HEAD /predict HTTP/1.1\r\n\r\n", b"GET /ping HTTP/1.1\r\n\r\n\r\n\r\n", b" GET /ping HTTP/1.1\r\n\r\n",
    b"GET /../../etc/passwd HTTP/1.1\r\n\r\n", b"GET /ping%00 HTTP/1.1\r\n\r\n", b"GET /ping\t HTTP/1.1\r\n\r\n",
]

BAD_HEADERS: list[bytes] = [
    b"NoColon\r\n", b"Bad Name: x\r\n", b"Name : x\r\n", b": empty-name\r\n", b"X-Folded: a\r\n  continued\r\n",
    b" Leading: space\r\n", b"X-Nul: a\x00b\r\n", b"X\x00Name: v\r\n", b"X-Ctl: \x01\x02\x7f\r\n",
    b"X-CR: a\rb\r\n", b"X-LF: a\nb\r\n", b"Content-Length: abc\r\n", b"Content-Length: 1 2\r\n",
    b"Content-Length: +5\r\n", b"Content-Length: 0x10\r\n", b"Content-Length: 99999999999999999999999\r\n",
    b"Content-Length: 18446744073709551617\r\n", b"Content-Length: -1\r\n", b"Content-Length: 5\r\n",
    b"Transfer-Encoding: gzip\r\n", b"Transfer-Encoding: chunked, gzip\r\n", b"Transfer-Encoding: identity\r\n",
    b"Transfer-Encoding: \x00chunked\r\n", b"Transfer-Encoding: chunked\r\n", b"Host: a\r\nHost: b\r\n",
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
    b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    b"Expect: 100-continue\r\n", b"Expect: something-else\r\n", b"Authorization: Bearer \xff\xfe\r\n",
    b"Authorization: bearer x\r\n", b"X-Latin: caf\xe9\r\n", b"X-Utf8: caf\xc3\xa9\r\n", b"\xff\xfe: v\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n", b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
    b"Connection: close, keep-alive\r\n", b"Connection: \x00close\r\n", b"X-Long: " + b"b" * 8000 + b"\r\n",
]

BAD_CHUNKED_BODIES: list[bytes] = [
    b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nab\r\n0\r\n\r\n", b"3\r\nabcdef\r\n0\r\n\r\n", b"ffffffffffffffffffff\r\n",
    b"-1\r\n", b"3;\x00ext\r\nabc\r\n0\r\n\r\n", b"3 \r\nabc\r\n0\r\n\r\n", b"3\nabc\n0\n\n",
    b"0\r\nTrailer: \x00\r\n\r\n", b"0\r\n", b"3\r\nabc", b"1\r\n{\r\n", b"0x3\r\nabc\r\n0\r\n\r\n", b"\r\n",
    b"3\r\nabc\r\n0\r\nX: y\r\n\r\n", b"7fffffff\r\n" + b"a" * 3000, b"3\r\nabc\r\n" * 50,
    b"0\r\n\r\n",  # an empty body: not JSON, a 400
]

CONFLICTS: list[bytes] = [
    b"POST /predict HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    b"POST /predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nTransfer-Encoding:\tchunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nContent-Length: 3\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    b"GET /ping HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nContent-Length: 9000000\r\n\r\n" + b"a" * 1000,
    b"POST /predict HTTP/1.1\r\nContent-Length:\r\n\r\n",
]

NON_ASCII: list[bytes] = [
    b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", b"GET /\xff\xfe HTTP/1.1\r\n\r\n", b"G\xc3\x89T / HTTP/1.1\r\n\r\n",
    b"GET /ping HTTP/1.1\r\nX: \xe2\x98\x83\r\n\r\n", b"GET /ping HTTP/\xd9\xa1.\xd9\xa1\r\n\r\n",
    b"GET /ping\xc0\xaf HTTP/1.1\r\n\r\n", "GET /пинг HTTP/1.1\r\n\r\n".encode(),
    b"POST /predict HTTP/1.1\r\nContent-Length: 8\r\n\r\n\"\xed\xa0\x80\xed\xb0\x80\"",  # surrogates
    b"POST /predict HTTP/1.1\r\nContent-Length: 5\r\n\r\n\xef\xbb\xbf{}",  # a BOM (and a 5 for 5 bytes)
]

TLS_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"


def huge_head(rng: Random) -> bytes:
    """A request head over 64 KiB, counted in ways that miss bytes easily."""
    return rng.choice([
        _PING_HEAD + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        _PING_HEAD + b"a:\r\n" * 20_000 + b"\r\n",  # many tiny headers: 80 kB of head, 20 kB of names
        _PING_HEAD + b"X-Pad:" + b" " * 70_000 + b"a\r\n\r\n",  # optional whitespace, stripped by the parser
        _PING_HEAD + b"X-Pad: a" + b" " * 70_000 + b"\r\n\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
        _PING_HEAD + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(80)) + b"\r\n",
    ])


def mutate(rng: Random, data: bytes) -> bytes:
    """``data`` with a few bytes replaced, dropped, inserted or repeated."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not b:
            break
        i = rng.randrange(len(b))
        op = rng.randrange(4)
        if op == 0:
            b[i] = rng.randrange(256)
        elif op == 1:
            del b[i]
        elif op == 2:
            b.insert(i, rng.choice(b"\x00\r\n :\t\x80\xff"))
        else:
            j = min(len(b), i + rng.randint(1, 16))
            b[i:i] = b[i:j] * rng.randint(1, 4)
    return bytes(b)


def dirty(rng: Random, bodies: dict[str, bytes]) -> Req:
    """One malformed or hostile request (or a stretch of bytes that is not one)."""
    pick = rng.choices(range(13), [8, 4, 10, 12, 4, 8, 8, 6, 3, 3, 1, 6, 6])[0]
    if pick == 0:
        data = rng.randbytes(rng.randint(1, 400))
    elif pick == 1:
        data = bytes(rng.randrange(32, 127) for _ in range(rng.randint(1, 200))) + b"\r\n\r\n"
    elif pick == 2:
        data = rng.choice(BAD_REQUEST_LINES)
    elif pick == 3:
        data = _PING_HEAD + rng.choice(BAD_HEADERS) + b"\r\n"
    elif pick == 4:  # a NUL anywhere in a clean request
        base = clean(rng, bodies, close=False).data
        i = rng.randrange(len(base))
        data = base[:i] + b"\x00" + base[i:]
    elif pick == 5:
        data = _POST_CHUNKED + rng.choice(BAD_CHUNKED_BODIES)
    elif pick == 6:
        data = rng.choice(CONFLICTS)
    elif pick == 7:
        data = rng.choice(NON_ASCII)
    elif pick == 8:
        data = TLS_HELLO
    elif pick == 9:  # Expect: 100-continue, then the body never comes (what follows is eaten as body)
        data = b"POST /predict HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 50\r\n\r\n"
    elif pick == 10:
        data = huge_head(rng)
    elif pick == 11:  # a truncated body: fewer bytes than Content-Length says
        body = bodies[rng.choice(["one", "three"])]
        cut = rng.randrange(len(body))
        data = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body[:cut])
    else:
        data = mutate(rng, clean(rng, bodies, close=False).data)
    return Req(data, None)


# --- scripts ---------------------------------------------------------------------------------

ENDS = ("read", "halfclose", "reset", "close")


@dataclass
class Script:
    """What one client sends, and how it ends."""

    label: str
    requests: list[Req]
    pieces: list[bytes]
    end: str  # one of ENDS
    send_pieces: int  # how many pieces are sent before the end (fewer than all: an early reset)
    rcvbuf: int | None = None  # a small client receive window, to back answers up

    def prefix(self) -> list[Req]:
        """The clean requests before the first malformed one, up to the first that closes."""
        out: list[Req] = []
        for r in self.requests:
            if r.kind is None:
                break
            out.append(r)
            if r.closes == "yes":
                break
        return out

    def tail_allowed(self) -> bool:
        """Whether anything (answers to malformed requests) may follow the prefix's answers."""
        p = self.prefix()
        return len(p) < len(self.requests) and not (p and p[-1].closes == "yes")

    def must_close(self) -> bool:
        """A read to the end of a clean pipeline whose last answered request asked to close."""
        p = self.prefix()
        return self.end == "read" and bool(p) and p[-1].closes == "yes"

    def describe(self) -> str:
        sent = b"".join(self.pieces[:self.send_pieces])
        kinds = [r.kind or "MALFORMED" for r in self.requests]
        return (f"{self.label}: end={self.end} pieces={len(self.pieces)} (sent {self.send_pieces}) "
                f"rcvbuf={self.rcvbuf} requests={kinds} bytes[:400]={sent[:400]!r}")


def split(rng: Random, data: bytes) -> list[bytes]:
    """``data`` cut at random offsets (sometimes one byte at a time for a stretch)."""
    if not data:
        return [b""]
    if rng.random() < 0.03:
        n = min(len(data), rng.randint(8, 64))
        return [data[i:i + 1] for i in range(n)] + ([data[n:]] if n < len(data) else [])
    cuts = sorted({rng.randrange(1, len(data)) for _ in range(rng.choice([0, 0, 1, 2, 3, 6]))} if len(data) > 1 else set())
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def make_script(rng: Random, bodies: dict[str, bytes], label: str) -> Script:
    style = rng.choices(["clean", "mixed", "dirty"], [40, 42, 18])[0]
    n = rng.choice([1, 1, 2, 2, 3, 4, 5, 6, 8, 12])
    end = rng.choices(ENDS, [50, 15, 15, 20])[0]
    requests: list[Req] = []
    for i in range(n):
        if style == "clean" or (style == "mixed" and rng.random() < 0.7):
            last_closes = style == "clean" and end == "read" and i == n - 1 and rng.random() < 0.6
            requests.append(clean(rng, bodies, close=True) if last_closes else clean(rng, bodies))
        else:
            requests.append(dirty(rng, bodies))
    if rng.random() < 0.08:  # cut the stream short, in the middle of some request
        stream = b"".join(r.data for r in requests)
        cut, kept, pos = rng.randrange(len(stream)), [], 0
        for r in requests:
            if pos + len(r.data) <= cut:
                kept.append(r)
            else:
                kept.append(Req(r.data[:cut - pos], None))
                break
            pos += len(r.data)
        requests = kept
    pieces = split(rng, b"".join(r.data for r in requests))
    send_pieces = len(pieces)
    if end == "reset" and rng.random() < 0.3:
        send_pieces = rng.randint(0, len(pieces))
    rcvbuf = rng.choice([1024, 4096]) if rng.random() < 0.1 else None
    return Script(label, requests, pieces, end, send_pieces, rcvbuf)


# --- reading answers -------------------------------------------------------------------------

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: [^\r\n]*)?")
_ANY_5XX = re.compile(rb"HTTP/1\.[01] 5\d\d")


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def parse_answers(data: bytes, methods: Sequence[str]) -> tuple[list[Answer], int, str | None]:
    """The complete final answers at the start of ``data`` (interim 1xx skipped), how many bytes
    they took, and an error when the bytes are not HTTP/1.1 answers.  ``methods[i]`` is the
    method of the i-th request (HEAD answers carry no body); beyond it, GET is assumed."""
    pos, out = 0, []
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            start = data[pos:pos + 9]
            if not (b"HTTP/1.1 ".startswith(start) or start.startswith(b"HTTP/1.")):
                return out, pos, f"not an answer at byte {pos}: {data[pos:pos + 80]!r}"
            break
        lines = data[pos:end].split(b"\r\n")
        m = _STATUS.fullmatch(lines[0])
        if not m:
            return out, pos, f"not a status line at byte {pos}: {lines[0][:80]!r}"
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                return out, pos, f"bad header line in an answer: {line[:80]!r}"
            headers[name.lower()] = value.strip()
        status = int(m.group(1))
        if 100 <= status < 200:
            pos = end + 4
            continue
        method = methods[len(out)] if len(out) < len(methods) else "GET"
        length = headers.get(b"content-length")
        if method == "HEAD" or status in (204, 304):
            size = 0
        elif length is None or not length.isdigit():
            return out, pos, f"an answer without a usable content-length: {data[pos:end][:200]!r}"
        else:
            size = int(length)
        if end + 4 + size > len(data):
            break
        out.append(Answer(status, headers, data[end + 4:end + 4 + size]))
        pos = end + 4 + size
    return out, pos, None


# --- the driver ------------------------------------------------------------------------------


@dataclass
class Outcome:
    script: Script
    data: bytes = b""
    eof: bool = False  # the server closed (FIN or RST)
    reset: bool = False
    timed_out: bool = False
    send_failed: bool = False
    error: str | None = None
    seconds: float = 0.0


@dataclass
class _Client:
    script: Script
    sock: socket.socket
    start: float
    outcome: Outcome
    phase: str = "connecting"  # connecting, sending, reading, done
    piece: int = 0
    offset: int = 0
    last: float = 0.0
    received: bytearray = field(default_factory=bytearray)


def _linger_close(sock: socket.socket) -> None:
    """Close with SO_LINGER (on, 0): the kernel sends RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def run_batch(port: int, scripts: Sequence[Script], concurrency: int, *, timeout: float = SOCKET_TIMEOUT,
              idle: float = IDLE, wall: float = 60.0) -> list[Outcome]:
    """Play ``scripts`` against 127.0.0.1:``port``, ``concurrency`` connections at a time."""
    sel = selectors.DefaultSelector()
    todo = deque(scripts)
    live: list[_Client] = []
    done: list[Outcome] = []
    give_up = time.monotonic() + wall

    def finish(c: _Client, now: float) -> None:
        c.phase = "done"
        c.outcome.data = bytes(c.received)
        c.outcome.seconds = now - c.start
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        if c.sock.fileno() >= 0:
            c.sock.close()

    def end_action(c: _Client, now: float) -> None:
        end = c.script.end
        if end == "reset":
            sel.unregister(c.sock)
            _linger_close(c.sock)
            finish(c, now)
        elif end == "close":
            sel.unregister(c.sock)
            c.sock.close()
            finish(c, now)
        else:
            if end == "halfclose":
                try:
                    c.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            c.phase = "reading"
            c.last = now
            sel.modify(c.sock, selectors.EVENT_READ, c)

    def on_read(c: _Client, now: float) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionResetError:
            c.outcome.eof = c.outcome.reset = True
            finish(c, now)
            return
        except OSError as exc:
            c.outcome.eof = True
            c.outcome.error = f"recv: {exc}"
            finish(c, now)
            return
        if not data:
            c.outcome.eof = True
            finish(c, now)
            return
        c.received += data
        c.last = now

    def on_write(c: _Client, now: float) -> None:
        if c.phase == "connecting":
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                c.outcome.error = f"connect: {errno.errorcode.get(err, err)}"
                finish(c, now)
                return
            c.phase = "sending"
        if c.piece >= c.script.send_pieces:
            end_action(c, now)
            return
        chunk = c.script.pieces[c.piece]
        try:
            c.offset += c.sock.send(chunk[c.offset:]) if chunk else 0
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the server closed on us (after an error answer, say): read what it said
            c.outcome.send_failed = True
            if c.script.end in ("read", "halfclose"):
                c.phase = "reading"
                c.last = now
                sel.modify(c.sock, selectors.EVENT_READ, c)
            else:
                finish(c, now)
            return
        if c.offset >= len(chunk):
            c.piece += 1
            c.offset = 0
            if c.piece >= c.script.send_pieces:
                end_action(c, now)
        # one piece per wake-up: the other connections' pieces go in between

    def start(script: Script, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if script.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, script.rcvbuf)
        c = _Client(script, sock, now, Outcome(script))
        rc = sock.connect_ex(("127.0.0.1", port))
        if rc not in (0, errno.EINPROGRESS):
            c.outcome.error = f"connect: {errno.errorcode.get(rc, rc)}"
            sock.close()
            c.phase = "done"
            done.append(c.outcome)
            return
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        live.append(c)

    try:
        while todo or live:
            now = time.monotonic()
            if now > give_up:
                raise AssertionError(f"a batch took over {wall}s ({len(todo)} scripts not started)")
            while todo and len(live) < concurrency:
                start(todo.popleft(), now)
            events = sel.select(0.02) if live else []
            now = time.monotonic()
            for key, mask in events:
                c = key.data
                if c.phase != "done" and mask & selectors.EVENT_READ:
                    on_read(c, now)
                if c.phase not in ("done", "reading") and mask & selectors.EVENT_WRITE:
                    on_write(c, now)
            for c in live:
                if c.phase == "done":
                    continue
                if now - c.start > timeout:
                    c.outcome.timed_out = True
                    finish(c, now)
                elif c.phase == "reading" and not c.script.must_close() and now - c.last > idle:
                    finish(c, now)
            for c in [c for c in live if c.phase == "done"]:
                live.remove(c)
                done.append(c.outcome)
    finally:
        for c in live:
            c.sock.close()
        sel.close()
    return done


# --- checking --------------------------------------------------------------------------------


def check(o: Outcome, expected: dict[str, tuple[int, bytes | None]]) -> str | None:
    """What is wrong with an outcome, or None.  ``expected``: each clean kind's status alone, and
    its body when that does not change from one request to the next (else None)."""
    s = o.script
    if o.error and o.error.startswith("connect"):
        return o.error
    if s.end in ("reset", "close"):
        return None  # nothing was read
    prefix = s.prefix()
    tail = s.tail_allowed()
    answers, used, err = parse_answers(o.data, [r.method for r in prefix])
    if err and (not tail or len(answers) < len(prefix)):
        return f"unparseable answers: {err}"
    fives = [a.status for a in answers if a.status >= 500]
    if fives or _ANY_5XX.search(o.data, used):
        return f"a 5xx answer: {fives or _ANY_5XX.search(o.data, used).group(0)!r}"  # type: ignore[union-attr]
    for i, (a, r) in enumerate(zip(answers, prefix)):
        assert r.kind is not None
        status, body = expected[r.kind]
        if a.status != status:
            return (f"answer {i} ({r.kind}) is {a.status}, alone it is {status}; "
                    f"statuses {[x.status for x in answers]}")
        if body is not None and r.method != "HEAD" and a.body != body:
            return f"answer {i} ({r.kind}) is not what it is alone: {a.body[:200]!r}, alone {body[:200]!r}"
    if not tail and len(answers) > len(prefix):
        return f"{len(answers)} answers to {len(prefix)} requests (answered past a close?)"
    closed_ok = {len(prefix)} | {i + 1 for i, r in enumerate(prefix) if r.closes == "maybe"}
    if s.must_close():
        if not o.eof:
            return (f"not closed {SOCKET_TIMEOUT}s after a request that asked to close "
                    f"({len(answers)} of {len(prefix)} answers)")
        if len(answers) not in closed_ok:
            return f"closed after {len(answers)} answers, {len(prefix)} were owed"
        if used != len(o.data):
            return f"{len(o.data) - used} bytes after the last answer: {o.data[used:used + 120]!r}"
        if len(answers) == len(prefix) and answers[-1].headers.get(b"connection", b"").lower() != b"close":
            return f"the last answer before the close has no connection: close: {answers[-1].headers}"
    elif s.end == "read" and o.eof and not tail and not o.send_failed and prefix:
        # No request asked to close: the server may close only after an HTTP/1.0 keep-alive one.
        n = len(answers)
        if not (n and prefix[n - 1].closes == "maybe"):
            return f"a keep-alive connection was closed after {n} of {len(prefix)} answers"
    return None


def generate(seed: int, count: int, bodies: dict[str, bytes]) -> Callable[[int], list[Script]]:
    """Batches of scripts from ``seed``: ``batch(n)`` returns the next ``n``."""
    rng = Random(seed)
    made = 0

    def batch(n: int) -> list[Script]:
        nonlocal made
        n = min(n, count - made)
        out = [make_script(rng, bodies, f"seed {seed} script {made + i}") for i in range(n)]
        made += n
        return out

    return batch
