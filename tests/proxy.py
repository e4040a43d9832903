"""A TCP proxy in front of Postgres that can lose a reply after a commit.

Armed with a command tag (``b"INSERT 0 1"``, ``b"COMMIT"``) and a marker (a
piece of SQL such as ``b"messages"``), it watches each connection: once the
client has sent SQL containing the marker, and the server's answer carries
the tag followed by ReadyForQuery in the idle state (the transaction is
committed), it drops that answer and cuts the connection, as a network fault
between the server's commit and the client's read would. The client sees a
lost connection and cannot know whether its statement committed.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

_READY = b"Z\x00\x00\x00\x05"  # ReadyForQuery; then I (idle), T or E (in a transaction)


@dataclass
class _Armed:
    tag: bytes
    marker: bytes
    times: int


@dataclass
class DropReplyProxy:
    target: tuple[str, int] = ("127.0.0.1", 5432)
    dropped: int = 0
    _armed: _Armed | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database_url: str) -> str:
        """``database_url`` (to the target) rewritten to go through the proxy."""
        host, port = self.target
        return database_url.replace(f"{host}:{port}", f"127.0.0.1:{self.port}")

    def arm(self, tag: bytes, marker: bytes, times: int = 1) -> None:
        """Lose the next ``times`` committed answers with ``tag`` to SQL with
        ``marker``."""
        with self._lock:
            self._armed = _Armed(tag, marker, times)

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            marked = threading.Event()
            threading.Thread(target=self._up, args=(client, server, marked), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, marked),
                             daemon=True).start()  # fmt: skip

    def _up(self, client: socket.socket, server: socket.socket, marked: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                armed = self._armed
                if armed is not None and armed.marker in data:
                    marked.set()
                server.sendall(data)
        except OSError:
            pass
        _close(client, server)

    def _down(self, server: socket.socket, client: socket.socket, marked: threading.Event) -> None:
        held = b""  # the answer so far, while the client's SQL was marked
        try:
            while data := server.recv(65536):
                if not marked.is_set():
                    client.sendall(data)
                    continue
                held += data
                if held[-6:-1] != _READY:
                    continue  # the answer is not complete yet
                idle = held[-1:] == b"I"  # its transaction is over: committed
                if idle and self._take(held):
                    break  # lost: the connection is cut
                if idle:
                    marked.clear()
                client.sendall(held)
                held = b""
        except OSError:
            pass
        _close(client, server)

    def _take(self, answer: bytes) -> bool:
        with self._lock:
            armed = self._armed
            if armed is None or armed.tag not in answer:
                return False
            armed.times -= 1
            if armed.times <= 0:
                self._armed = None
            self.dropped += 1
            return True


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
