"""A TCP proxy on loopback for fault injection and measurement in tests.

``TcpProxy(target_port)`` listens on a free 127.0.0.1 port and forwards every
connection to ``127.0.0.1:target_port``.  It can terminate TLS with a server
context that requires client certificates (mutual TLS like nginx on a node),
``cut()`` the link (open connections are reset, new ones refused until
``heal()``), and counts the bytes clients sent with the time of the first and
last byte (the achieved rate of a paced sender).
"""
from __future__ import annotations

import socket
import ssl
import threading
import time

from .orthanc import LOOPBACK, free_port


class TcpProxy:
    def __init__(self, target_port: int, *, tls: ssl.SSLContext | None = None, port: int | None = None):
        self.target_port = target_port
        self.tls = tls
        self.port = port or free_port()
        self._srv: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.bytes_up = 0
        self.first_byte_at: float | None = None
        self.last_byte_at: float | None = None
        self.connections = 0
        self.handshake_errors: list[str] = []

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}/"

    def start(self) -> "TcpProxy":
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((LOOPBACK, self.port))
        srv.listen(64)
        self._srv = srv
        self._thread = threading.Thread(target=self._accept, args=(srv,), daemon=True)
        self._thread.start()
        return self

    def reset_counters(self) -> None:
        with self._lock:
            self.bytes_up = 0
            self.first_byte_at = self.last_byte_at = None

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            if self.tls:
                client = self.tls.wrap_socket(client, server_side=True)
            upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=30)
        except (OSError, ssl.SSLError) as exc:
            self.handshake_errors.append(repr(exc))
            client.close()
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._conns |= {client, upstream}
            self.connections += 1
        t = threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True)
        t.start()
        self._pump(client, upstream, True)
        t.join(5)

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if count:
                    now = time.monotonic()
                    with self._lock:
                        if self.first_byte_at is None:
                            self.first_byte_at = now
                        self.last_byte_at = now
                        self.bytes_up += len(data)
                dst.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass
            with self._lock:
                self._conns -= {src, dst}

    def cut(self) -> None:
        """Link down: reset open connections and refuse new ones."""
        if self._srv is not None:
            try:
                self._srv.shutdown(socket.SHUT_RDWR)    # wakes the blocked accept()
            except OSError:
                pass
            self._srv.close()
            self._srv = None
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread:
            self._thread.join(5)

    def heal(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
