"""Serving the studio app with uvicorn: in the foreground (`musicgpt studio`) or in a thread (tests, benchmarks).

The socket is bound here, before uvicorn starts, so port 0 (any free port) works and the URL is known
as soon as the server object exists; a port in use is a clear error, not a traceback.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import uvicorn

from musicgpt.errors import ConfigError

SHUTDOWN_GRACE_S = 3  # open event streams get this long to end when the server stops


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str) -> list[str]:
    """The Host names the app answers when bound to `host`: the loopback names and the bound address as the
    printed URL writes it (`[::1]`, `127.0.0.2`); any name for a wildcard or another machine's address."""
    if not is_loopback(host):
        return ["*"]
    names = ["127.0.0.1", "localhost", url_host(host)]
    return list(dict.fromkeys(names))


def url_host(host: str) -> str:
    """`host` as a URL writes it: IPv6 in brackets, the wildcard as 127.0.0.1."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class StudioServer:
    """An ASGI app on a bound socket, served by uvicorn."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8765):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError as exc:
            self.socket.close()
            raise ConfigError(f"studio: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                              "choose another --port or --host") from None
        self.socket.listen(64)
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address."""
        return f"http://{url_host(self.host)}:{self.port}/"

    def run(self) -> None:
        """Serve until interrupted (Ctrl-C / SIGTERM)."""
        self.server.run(sockets=[self.socket])

    def start(self) -> "StudioServer":
        """Serve from a daemon thread; returns once the server answers."""
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                        name="musicgpt-studio-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("studio: the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop a server started with start()."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(SHUTDOWN_GRACE_S + 10)
        self.socket.close()

    def __enter__(self) -> "StudioServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
