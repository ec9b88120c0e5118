"""Logging: operational logs as JSON lines on stderr (the gate's and uvicorn's), and the audit log
as its own stream (MLFLOW_GATE_AUDIT_LOG: stderr, stdout, a file path, or off). Lines are written by
a background thread so the event loop never waits on a slow terminal or disk."""
from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
from typing import IO

from . import audit


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _stream(target: str) -> IO[str]:
    if target == "stdout":
        return sys.stdout
    if target in ("", "stderr"):
        return sys.stderr
    return open(target, "a", encoding="utf-8")


class Logs:
    """What `configure` started; `close()` flushes and stops it."""

    def __init__(self, listener: logging.handlers.QueueListener, writer: audit.AuditWriter | None) -> None:
        self.listener, self.writer = listener, writer

    def close(self) -> None:
        self.listener.stop()
        if self.writer is not None:
            self.writer.close()


def configure(audit_target: str = "stderr") -> Logs:
    """Route mlflow_gate.* and uvicorn.* to JSON on stderr and the audit log to `audit_target`."""
    ops = logging.StreamHandler(sys.stderr)
    ops.setFormatter(JsonFormatter())
    ops.addFilter(lambda r: r.name != "mlflow_gate.audit")
    writer = None
    if audit_target != "off":
        writer = audit.AuditWriter(_stream(audit_target))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, ops, respect_handler_level=True)
    for name, level in (("mlflow_gate", logging.INFO), ("uvicorn", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [logging.handlers.QueueHandler(records)]
        logger.setLevel(level)
        logger.propagate = False
    logging.getLogger("uvicorn.error").propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("mlflow_gate.audit").disabled = audit_target == "off"
    listener.start()
    return Logs(listener, writer)
