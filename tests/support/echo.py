"""A stand-in upstream that records what the gate forwards and answers like a tiny MLflow (for tests of what the
gate sends upstream: headers, bodies, chunked uploads)."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.gate import Gate
from tests.support.process import LogSource


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EchoUpstream

    def _answer(self) -> None:
        body = self._read_body()
        record = {"method": self.command, "path": self.path, "headers": list(self.headers.items()),
                  "body": body.decode(errors="replace")}
        self.server.records.append(record)
        if self.path.split("?")[0] == "/health":
            payload, ctype = b"OK", "text/plain"
        else:
            experiment = {"experiment_id": "1", "name": "alpha/echo", "lifecycle_stage": "active",
                          "artifact_location": "mlflow-artifacts:/1", "tags": []}
            payload = json.dumps({"experiment": experiment, "echo": record}).encode()
            ctype = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class EchoUpstream(ThreadingHTTPServer):
    """Serves on 127.0.0.1 (a free port) from a daemon thread once started; `records` holds every request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.records: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> EchoUpstream:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@dataclass
class EchoGate(LogSource):
    """A gate in front of the echo upstream: `records` holds every request the upstream received."""

    gate: Gate
    records: list[dict[str, Any]]

    def logs(self) -> dict[str, Path]:
        return self.gate.logs()
