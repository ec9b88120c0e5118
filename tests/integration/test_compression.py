"""Compression on the wire through the real gate in front of a real mlflow server: negotiated answers, the UI's
static files with their validators, coded request bodies read by the gate's authorization, and the mlflow client."""
from __future__ import annotations

import gzip
import json
import re
import time
from typing import Any

import brotli
import httpx
import mlflow
import pytest
import requests
from gate_it import ALICE, BOB, World, uid
from mlflow.entities import Metric

from proxy.codings import zstd

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("mlflow_server", ["sqlite"], indirect=True)]

A = "/api/2.0/mlflow"
BROWSER = "gzip, deflate, br, zstd"        # what Chromium sends
DECODE = {"gzip": gzip.decompress, "br": brotli.decompress, "zstd": zstd.decompress, None: lambda b: b}


def raw(client: httpx.Client, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, bytes]:
    """The answer as it came over the wire (httpx would decode it)."""
    with client.stream(method, url, **kwargs) as r:
        return r, b"".join(r.iter_raw())


@pytest.fixture(scope="module")
def history_run(gate, world: World) -> str:  # type: ignore[no-untyped-def]
    """A run of alice's with a 5,000-point metric history (a 400 KB answer)."""
    alice = gate.client(ALICE)
    run_id = alice.create_run(world.alpha_exp).info.run_id
    now = int(time.time() * 1000)
    for start in range(0, 5000, 1000):
        alice.log_batch(run_id, metrics=[Metric("loss", 1 / (s + 1), now + s, s) for s in range(start, start + 1000)])
    return str(run_id)


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd", None])
def test_each_coding_through_the_gate(gate, mlflow_server, history_run: str, coding: str | None) -> None:  # type: ignore[no-untyped-def]
    params = {"run_id": history_run, "metric_key": "loss"}
    headers = {"Accept-Encoding": coding or "identity"}
    with gate.http(ALICE) as h:
        r, body = raw(h, "GET", f"{A}/metrics/get-history", params=params, headers=headers)
    direct = httpx.get(f"{mlflow_server.url}{A}/metrics/get-history", params=params, timeout=60).content
    assert r.status_code == 200 and r.headers.get("content-encoding") == coding
    assert "accept-encoding" in r.headers["vary"].lower()
    assert json.loads(DECODE[coding](body)) == json.loads(direct)
    if coding:
        assert len(body) < len(direct) / 4
        assert "content-length" not in r.headers and r.headers["transfer-encoding"] == "chunked"   # streamed


def test_browser_preference_and_refusals(gate, history_run: str) -> None:  # type: ignore[no-untyped-def]
    params = {"run_id": history_run, "metric_key": "loss"}
    with gate.http(ALICE) as h:
        r, _ = raw(h, "GET", f"{A}/metrics/get-history", params=params, headers={"Accept-Encoding": BROWSER})
        assert r.headers["content-encoding"] == "zstd"
        r, _ = raw(h, "GET", f"{A}/metrics/get-history", params=params,
                   headers={"Accept-Encoding": "zstd;q=0.1, gzip;q=0.9, br;q=0.5"})
        assert r.headers["content-encoding"] == "gzip"
        r, body = raw(h, "GET", f"{A}/metrics/get-history", params=params, headers={"Accept-Encoding": "identity;q=0"})
        assert r.status_code == 406 and json.loads(body)["error_code"] == "INVALID_PARAMETER_VALUE"
        # small answers stay as they are
        r, body = raw(h, "GET", f"{A}/experiments/get-by-name", params={"experiment_name": "alpha/base"},
                      headers={"Accept-Encoding": BROWSER})
        assert r.status_code == 200 and "content-encoding" not in r.headers and json.loads(body)


def test_a_gzip_body_is_authorized_on_the_experiment_it_names(gate, world: World) -> None:  # type: ignore[no-untyped-def]
    def create(experiment_id: str, coding: str = "gzip") -> httpx.Response:
        payload = json.dumps({"experiment_id": experiment_id, "run_name": f"gz-{uid()}"}).encode()
        coded = {"gzip": gzip.compress, "br": brotli.compress, "zstd": zstd.compress}[coding](payload)
        with gate.http(ALICE) as h:
            return h.post(f"{A}/runs/create", content=coded,
                          headers={"Content-Type": "application/json", "Content-Encoding": coding})

    for coding in ("gzip", "br", "zstd"):
        r = create(world.alpha_exp, coding)
        assert r.status_code == 200, r.text
        run = r.json()["run"]
        assert run["info"]["experiment_id"] == world.alpha_exp
        assert {t["key"]: t["value"] for t in run["data"]["tags"]}["mlflow.user"] == ALICE   # rewritten by the gate
    r = create(world.beta_exp)           # another team's experiment, hidden in a gzip body
    assert r.status_code == 403 and r.json()["error_code"] == "PERMISSION_DENIED", r.text
    runs = gate.client(BOB).search_runs([world.beta_exp], max_results=1000)
    assert not [x for x in runs if (x.info.run_name or "").startswith("gz-")]


def test_a_coded_get_body_is_read_like_a_plain_one(gate, world: World) -> None:  # type: ignore[no-untyped-def]
    """MLflow reads GET parameters from a JSON body when the query is empty: coded, that body still decides."""
    with gate.http(ALICE) as h:
        for run_id, status in ((world.beta_run, 403), (world.alpha_run, 200)):
            r = h.request("GET", f"{A}/runs/get", content=gzip.compress(json.dumps({"run_id": run_id}).encode()),
                          headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
            assert r.status_code == status, r.text
        assert r.json()["run"]["info"]["run_id"] == world.alpha_run


def test_bombs_and_broken_bodies(gate, world: World) -> None:  # type: ignore[no-untyped-def]
    bomb = zstd.compress(b"{" + b" " * (100 * 1024 * 1024) + b"}", level=3)       # 100 MiB of JSON in a few KiB
    with gate.http(ALICE) as h:
        r = h.post(f"{A}/runs/log-batch", content=bomb, headers={"Content-Encoding": "zstd",
                                                                 "Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE", r.text
        assert "64 MiB" in r.json()["message"]
        r = h.post(f"{A}/runs/create", content=b"plain text", headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400 and "gzip" in r.json()["message"], r.text
        r = h.post(f"{A}/runs/create", content=b"x", headers={"Content-Encoding": "compress"})
        assert r.status_code == 415 and r.headers["accept-encoding"] == "zstd, br, gzip", r.text
    assert len(bomb) < 64 * 1024


def _bundle(gate) -> str:  # type: ignore[no-untyped-def]
    with gate.http(ALICE) as h:
        index = h.get("/", headers={"Accept": "text/html"}).text
    found = re.search(r'src="(static-files/static/js/main\.[0-9a-f]+\.js)"', index)
    assert found, index[:500]
    return "/" + found.group(1)


def test_static_files_compressed_once_with_validators(gate, mlflow_server) -> None:  # type: ignore[no-untyped-def]
    path = _bundle(gate)
    original = httpx.get(mlflow_server.url + path, timeout=60)
    assert original.headers["cache-control"] == "public, max-age=2419200" and original.headers["etag"]
    with gate.http(ALICE) as h:
        first, body1 = raw(h, "GET", path, headers={"Accept-Encoding": BROWSER})
        deadline = time.monotonic() + 60
        while True:     # the first answer is coded fast as it streams; the copy kept is made in the background
            t0 = time.perf_counter()
            second, body2 = raw(h, "GET", path, headers={"Accept-Encoding": BROWSER})
            again = time.perf_counter() - t0
            if not second.headers["etag"].startswith("W/") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        tag = second.headers["etag"]
        revalidated, body3 = raw(h, "GET", path, headers={"Accept-Encoding": BROWSER, "If-None-Match": tag})
        gz, body4 = raw(h, "GET", path, headers={"Accept-Encoding": "gzip"})
    assert first.status_code == second.status_code == 200 and first.headers["content-encoding"] == "br"
    assert brotli.decompress(body1) == original.content and first.headers["etag"] == "W/" + original.headers["etag"][:-1] + '-br"'
    assert second.headers["content-encoding"] == "br" and brotli.decompress(body2) == original.content
    assert len(body2) < len(body1)
    assert len(body2) < len(original.content) / 3 and second.headers["content-length"] == str(len(body2))
    assert tag == original.headers["etag"][:-1] + '-br"'
    assert second.headers["cache-control"] == original.headers["cache-control"]
    assert "accept-encoding" in second.headers["vary"].lower()
    assert again < 2.0, f"a cached bundle took {again:.2f} s"
    assert revalidated.status_code == 304 and body3 == b"" and revalidated.headers["etag"] == tag
    assert gz.headers["content-encoding"] == "gzip" and gzip.decompress(body4) == original.content
    # the cache never answers past the gate: no credential, no file
    with gate.http() as anonymous:
        r, body = raw(anonymous, "GET", path, headers={"Accept-Encoding": BROWSER})
    assert r.status_code == 401 and b"UNAUTHENTICATED" in body


def test_mlflow_client_with_compression(gate, world: World, history_run: str) -> None:  # type: ignore[no-untyped-def]
    """The mlflow client (requests + urllib3, which ask for gzip, br and zstd here) reads coded answers."""
    assert "zstd" in requests.utils.default_headers()["Accept-Encoding"]
    alice = gate.client(ALICE)
    history = alice.get_metric_history(history_run, "loss")
    assert len(history) == 5000 and sorted(m.step for m in history) == list(range(5000))
    with alice.acting():
        mlflow.set_experiment(experiment_id=world.alpha_exp)
        with mlflow.start_run() as run:
            mlflow.log_params({f"p{i}": "v" * 50 for i in range(60)})
            mlflow.log_text("x" * 10000, "notes/big.txt")
        found = mlflow.search_runs([world.alpha_exp], filter_string=f"attributes.run_id = '{run.info.run_id}'")
        assert len(found) == 1 and found["params.p59"][0] == "v" * 50
        assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/notes/big.txt") == "x" * 10000
    r = requests.get(f"{gate.url}{A}/metrics/get-history", params={"run_id": history_run, "metric_key": "loss"},
                     headers={"Authorization": f"Bearer {gate.token(ALICE)}"}, timeout=60)
    assert r.headers["content-encoding"] == "zstd" and len(r.json()["metrics"]) == 5000


def test_a_filtered_search_page_is_coded_whole(gate, world: World, history_run: str) -> None:  # type: ignore[no-untyped-def]
    """The gate builds filtered search pages itself (one message): coded at once, with a Content-Length."""
    body = {"experiment_ids": [world.alpha_exp, world.beta_exp], "max_results": 100}
    with gate.http(ALICE) as h:
        r, wire = raw(h, "POST", "/ajax-api/2.0/mlflow/runs/search", json={**body, "experiment_ids": [world.alpha_exp]},
                      headers={"Accept-Encoding": "br"})
        assert r.status_code == 200 and r.headers["content-encoding"] == "br", r.headers
        assert r.headers["content-length"] == str(len(wire))
        runs = json.loads(brotli.decompress(wire))["runs"]
        assert history_run in {x["info"]["run_id"] for x in runs}
        r, wire = raw(h, "POST", "/ajax-api/2.0/mlflow/runs/search", json=body, headers={"Accept-Encoding": "br"})
        text = (brotli.decompress(wire) if r.headers.get("content-encoding") == "br" else wire).decode()
        assert r.status_code == 403 or world.beta_run not in text, text[:300]      # coded or not, nothing of beta's
