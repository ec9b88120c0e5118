"""The handler's last line: an unexpected exception becomes MLflow's JSON 500 naming the request id, with the
traceback logged under that id; the request id is the client's when well-formed. A fake of the services."""
from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from proxy.gate import Gate


class Broken:
    @property
    def current(self) -> Any:
        raise RuntimeError("the policy store broke")


def serve(headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    services = SimpleNamespace(store=Broken(), metrics=SimpleNamespace(request=lambda *a: None,
                                                                        team_call=lambda *a: None))
    scope = {"type": "http", "method": "GET", "path": "/api/2.0/mlflow/experiments/get", "raw_path": None,
             "query_string": b"experiment_id=1", "headers": headers}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(Gate(services)(scope, receive, send))  # type: ignore[arg-type]
    return sent


def test_an_unexpected_error_is_mlflow_json_with_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="mlflow_gate"):
        start, body = serve([(b"x-request-id", b"req-42")])
    assert start["status"] == 500
    assert (b"x-request-id", b"req-42") in start["headers"]
    data = json.loads(body["body"])
    assert data["error_code"] == "INTERNAL_ERROR" and "req-42" in data["message"]
    assert "the policy store broke" not in data["message"]
    record = next(r for r in caplog.records if "req-42" in r.getMessage())
    assert record.exc_info and "the policy store broke" in str(record.exc_info[1])


@pytest.mark.parametrize("sent", [[], [(b"x-request-id", b"a b")], [(b"x-request-id", b"1"), (b"x-request-id", b"2")],
                                  [(b"x-request-id", b"x" * 129)]])
def test_a_missing_or_malformed_request_id_is_replaced(sent: list[tuple[bytes, bytes]]) -> None:
    start, _ = serve(sent)
    ids = [v for k, v in start["headers"] if k == b"x-request-id"]
    assert len(ids) == 1 and len(ids[0]) == 32 and ids[0] not in (v for _, v in sent)
