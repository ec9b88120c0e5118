"""Logging: operational logs as JSON lines on stderr (the gate's and uvicorn's), and the audit log
as its own stream (MLFLOW_GATE_AUDIT_LOG: stderr, stdout, a file path, or off). Lines are written by
a background thread so the event loop never waits on a slow terminal or disk."""
from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class AuditFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()      # already one JSON object


def _stream(target: str) -> logging.Handler:
    if target == "stdout":
        return logging.StreamHandler(sys.stdout)
    if target in ("", "stderr"):
        return logging.StreamHandler(sys.stderr)
    return logging.FileHandler(target, encoding="utf-8")


def configure(audit_target: str = "stderr") -> logging.handlers.QueueListener:
    """Route mlflow_gate.* and uvicorn.* to JSON on stderr and the audit log to `audit_target`."""
    ops = logging.StreamHandler(sys.stderr)
    ops.setFormatter(JsonFormatter())
    ops.addFilter(lambda r: r.name != "mlflow_gate.audit")
    handlers: list[logging.Handler] = [ops]
    if audit_target != "off":
        audit = _stream(audit_target)
        audit.setFormatter(AuditFormatter())
        audit.addFilter(lambda r: r.name == "mlflow_gate.audit")
        handlers.append(audit)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
    for name, level in (("mlflow_gate", logging.INFO), ("uvicorn", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [logging.handlers.QueueHandler(records)]
        logger.setLevel(level)
        logger.propagate = False
    logging.getLogger("uvicorn.error").propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("mlflow_gate.audit").disabled = audit_target == "off"
    listener.start()
    return listener
