"""A TCP relay in front of a server that counts the bytes passing through it each way: to measure how much of an
artifact goes through the gate (client -> relay -> gate, on 127.0.0.1)."""
from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit


class CountingRelay:
    """Listens on a free loopback port and relays every connection to `target` (http://host:port), counting the
    bytes sent up (to the target) and down (back to the clients). Daemon threads; `close()` stops listening."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.up = self.down = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="relay-accept").start()

    def total(self) -> int:
        with self._lock:
            return self.up + self.down

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while data := src.recv(256 * 1024):
                with self._lock:
                    if way == "up":
                        self.up += len(data)
                    else:
                        self.down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.listener.close()
