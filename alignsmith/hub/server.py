"""The embedded Hub: a Hub-compatible HTTP server over :mod:`alignsmith.hub.storage`.

The real clients (``huggingface_hub``, ``datasets``, ``transformers``, ``peft``) talk to it
unchanged through ``HF_ENDPOINT`` (with ``HF_HUB_DISABLE_XET=1``: uploads use classic LFS).
This module is the HTTP and process side: request framing, the threaded server, the root
lock; the routes themselves are :class:`alignsmith.hub.api.HubApp`.

One server process owns a root directory (a file lock enforces it) and writes
``server.json`` there so :func:`alignsmith.hub.local.ensure_local_hub` can find it.

Run it with ``python -m alignsmith.hub.server --root DIR [--host 127.0.0.1] [--port N]``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from contextlib import ExitStack
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, Sequence
from urllib.parse import parse_qs, urlsplit

from alignsmith import __version__
from alignsmith.errors import AlignsmithError
from alignsmith.files import atomic_write_json, file_lock
from alignsmith.hub import auth
from alignsmith.hub.api import CHUNK_SIZE, HubApp, Request, Response, error_response
from alignsmith.hub.storage import BadRequestError, HubError, HubStorage, default_root

log = logging.getLogger("alignsmith.hub")

STATE_FILE = "server.json"
LOCK_FILE = "server.lock"
MAX_DRAIN = 1024 * 1024
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")  # not isdigit()/int(): they take signs and non-ASCII digits


class HubServerError(AlignsmithError):
    """The server cannot start (the root is in use, or the address cannot be bound)."""


# -- HTTP plumbing ------------------------------------------------------------------------------


class _BodyReader(io.RawIOBase):
    """A request body, framed by Content-Length or chunked transfer encoding.

    A body that ends before its framing says it should raises ``ConnectionAbortedError`` instead
    of reading as a shorter body: a commit cut off at a line boundary must not be applied in part.
    """

    @classmethod
    def framed_by(cls, rfile: BinaryIO, headers: Message) -> _BodyReader:
        """The body the headers announce; a Content-Length that is not one number is a 400.

        Read as no body, the bytes of a malformed one would be parsed as the next request.
        """
        if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
            return cls(rfile, None, chunked=True)
        values = {value.strip() for value in headers.get_all("Content-Length", [])}
        if len(values) > 1 or not all(_CONTENT_LENGTH.fullmatch(value) for value in values):
            raise BadRequestError(
                f"malformed Content-Length {', '.join(map(repr, sorted(values)))}: "
                "it must be a single decimal number of bytes"
            )
        return cls(rfile, int(values.pop()) if values else None, chunked=False)

    def __init__(self, rfile: BinaryIO, length: int | None, chunked: bool) -> None:
        self._rfile = rfile
        self._remaining = length or 0
        self._chunked = chunked
        self._chunk_left = 0
        self.finished = not chunked and not length
        self.broken = False  # the framing is unreadable: the connection cannot carry another request

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.finished:
            return 0
        if self._chunked and self._chunk_left == 0 and not self._next_chunk():
            return 0
        want = min(len(buffer), self._chunk_left if self._chunked else self._remaining)
        got = self._rfile.readinto(memoryview(buffer)[:want])
        if not got:
            self._cut_short()
        if self._chunked:
            self._chunk_left -= got
            if self._chunk_left == 0:
                self._rfile.readline()  # CRLF closing the chunk
        else:
            self._remaining -= got
            self.finished = self._remaining == 0
        return got

    def _next_chunk(self) -> bool:
        line = self._rfile.readline(1024)
        if not line:
            self._cut_short()
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            size = -1
        if size < 0:
            self.broken = True
            raise BadRequestError(f"malformed chunk size {line[:40]!r} in a chunked request body")
        if size == 0:
            while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            self.finished = True
            return False
        self._chunk_left = size
        return True

    def _cut_short(self) -> NoReturn:
        self.broken = True
        raise ConnectionAbortedError("the client closed the connection before the end of the request body")

    def drain(self) -> bool:
        """Discard a small unread body so the connection can be reused; False if it cannot be."""
        if self.broken:
            return False
        if self.finished:
            return True
        if not self._chunked and self._remaining > MAX_DRAIN:
            return False
        discarded = 0
        try:
            while discarded <= MAX_DRAIN:
                chunk = self.read(64 * 1024)
                if not chunk:
                    return True
                discarded += len(chunk)
        except BadRequestError:  # malformed chunk framing further on
            return False
        return False


class _HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"alignsmith-hub/{__version__}"
    timeout = 300  # idle keep-alive connections are closed after this many seconds
    server: _HubHTTPServer

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _serve(self) -> None:
        started = time.monotonic()
        head = self.command == "HEAD"
        try:
            reader = _BodyReader.framed_by(self.rfile, self.headers)
        except BadRequestError as exc:  # where the body ends is unknown: nothing after it can be read
            self._reply(error_response(exc, head), head, None)
            return
        url = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query, keep_blank_values=True),
            headers=self.headers,
            body=io.BufferedReader(reader, CHUNK_SIZE),
            base_url=f"http://{self.headers.get('Host') or self.server.authority}",
        )
        try:
            response = self.server.app.handle(request)
        except HubError as exc:
            response = error_response(exc, head)
        except ConnectionError:  # the client went away mid-request; whatever it sent is discarded
            self.close_connection = True
            log.info("%s %s: client disconnected", self.command, self.path)
            return
        except Exception as exc:  # a bug or an I/O failure: answer 500 instead of dropping the connection
            log.exception("%s %s failed", self.command, self.path)
            response = error_response(HubError(f"internal error: {exc!r}"), head)
        self._reply(response, head, reader)
        log.debug(
            "%s %s -> %d (%.1f ms)", self.command, self.path, response.status, (time.monotonic() - started) * 1000
        )

    def _reply(self, response: Response, head: bool, reader: _BodyReader | None) -> None:
        """Send ``response``, keeping the connection only if the request body (``reader``) could be read to its end."""
        try:
            if reader is None or not reader.drain():
                self.close_connection = True
                response.headers["Connection"] = "close"
            self._send(response, head)
        except ConnectionError:
            self.close_connection = True
        finally:
            if response.file is not None:
                response.file.close()

    def _send(self, response: Response, head: bool) -> None:
        self.send_response(response.status)
        length = response.length if response.file is not None else len(response.body)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if response.file is None:
            if not head:
                self.wfile.write(response.body)
            return
        sent = 0
        while not head and sent < length:  # sendfile: the kernel copies file pages straight to the socket
            sent += self.connection.sendfile(response.file, response.offset + sent, length - sent)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request is logged by _serve, with its duration


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    app: HubApp
    authority: str


# -- the server object --------------------------------------------------------------------------


def read_state(root: Path) -> dict[str, Any] | None:
    """The ``server.json`` a running server left in ``root``, if any (it may be stale)."""
    try:
        data = json.loads((Path(root) / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


class HubServer:
    """An embedded Hub serving ``root`` on ``host:port`` (port 0: any free port).

    The port is bound at construction, so :attr:`url` is known at once, but connections are
    refused until :meth:`start` (background thread) or :meth:`serve_forever` (foreground).
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = self._acquire_root()
        try:
            self.storage = HubStorage(self.root)
            removed = self.storage.recover()
            if removed:
                log.info("removed %d leftover file(s) of interrupted uploads under %s", removed, self.root)
            self.created_admin_token = auth.ensure_admin_token(self.root) is not None
            if self.created_admin_token:
                log.warning(
                    "created %s with an admin token (write access to every namespace)", auth.token_file(self.root)
                )
            self._httpd = _HubHTTPServer((host, port), _HubRequestHandler, bind_and_activate=False)
            try:
                self._httpd.server_bind()
            except OSError as exc:
                self._httpd.server_close()
                raise HubServerError(f"cannot bind the embedded Hub to {host}:{port}: {exc}") from exc
        except BaseException:
            self._release_root()
            raise
        self._httpd.app = HubApp(self.storage, auth.TokenStore(self.root))
        bound_host, bound_port = self._httpd.server_address[:2]
        self._httpd.authority = f"{bound_host}:{bound_port}"
        self.host, self.port = str(bound_host), int(bound_port)
        self._thread: threading.Thread | None = None
        self._listening = False
        self._serving = False

    def _acquire_root(self) -> ExitStack:
        """Hold the root's lock for the server's lifetime: one server per storage folder."""
        held = ExitStack()
        try:
            held.enter_context(file_lock(self.root / LOCK_FILE, blocking=False))
        except BlockingIOError:
            state = read_state(self.root) or {}
            raise HubServerError(
                f"another embedded Hub server (pid {state.get('pid', '?')}, {state.get('url', '?')}) "
                f"is already using {self.root}"
            ) from None
        return held

    def _release_root(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _listen(self) -> None:
        if not self._listening:
            self._httpd.server_activate()
            self._listening = True
            atomic_write_json(
                self.root / STATE_FILE,
                {
                    "pid": os.getpid(),
                    "host": self.host,
                    "port": self.port,
                    "url": self.url,
                    "root": str(self.root),
                    "version": __version__,
                },
            )
            log.info("embedded Hub serving %s at %s", self.root, self.url)

    def start(self) -> HubServer:
        """Serve from a background (daemon) thread; returns self."""
        if self._thread is None:
            self._listen()
            self._serving = True
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="alignsmith-hub", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` (from another thread) or an exception."""
        self._listen()
        self._serving = True
        self._httpd.serve_forever()

    def stop(self) -> None:
        if self._lock is None:
            return
        if self._serving:
            self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        state = read_state(self.root)
        if state and state.get("pid") == os.getpid() and state.get("port") == self.port:
            (self.root / STATE_FILE).unlink(missing_ok=True)
        self._release_root()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None, prog: str = "alignsmith hub serve") -> int:
    """``alignsmith hub serve`` / ``python -m alignsmith.hub.server``: serve a root until SIGINT/SIGTERM."""

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="storage directory (default: $ALIGNSMITH_HUB_ROOT or ~/.cache/alignsmith/hub)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port; see server.json)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        server = HubServer(args.root or default_root(), args.host, args.port)
    except HubServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    if server.created_admin_token:
        print(f"admin token written to {auth.token_file(server.root)}", file=sys.stderr)
    print(f"embedded Hub at {server.url} (root {server.root})", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
