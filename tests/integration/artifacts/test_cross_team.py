"""Bob (team beta) against alice's (team alpha) artifacts on every artifact route family, with path tricks, and the
internal endpoint without the internal token: all refused, and never a byte of alice's data."""
from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.artifacts.art_it import (
    ALICE,
    BOB,
    BUCKETS,
    INTERNAL_PREFIX,
    ROOT,
    ArtGate,
    Logged,
    Version,
    raw_request,
)
from tests.integration.gate_it import denied

pytestmark = pytest.mark.integration

API = "/api/2.0/mlflow-artifacts"
AJAX = "/ajax-api/2.0/mlflow-artifacts"
A_FILE = "{A_EXP}/{A_RUN}/artifacts/notes/hello.txt"
A_DIR = "{A_EXP}/{A_RUN}/artifacts"
EVIL = b"evil bytes from bob"


def refs(alpha_log: Logged, beta_log: Logged, alpha_version: Version) -> dict[str, str]:
    return {"A_EXP": alpha_log.exp_id, "A_RUN": alpha_log.run_id, "A_MODEL": alpha_log.model_id,
            "A_TRACE": alpha_log.trace_id, "A_ATT": alpha_log.attachment_id,
            "B_EXP": beta_log.exp_id, "B_RUN": beta_log.run_id, "B_MODEL": beta_log.model_id,
            "B_TRACE": beta_log.trace_id, "A_NAME": alpha_version.name, "A_VERSION": alpha_version.version}


def leaks(alpha_log: Logged, body: bytes) -> list[str]:
    """What of alice's data a response body shows: her files' bytes, an MLmodel, trace spans, a listing."""
    found = [m for m in (alpha_log.marker, "flavors:", "sklearn_version", '"spans"', '"files"', "root:x:0:0")
             if m.encode() in body]
    found += [f"bytes of {p}" for p, c in alpha_log.files.items() if c[:64] in body]
    if alpha_log.attachment[:40] in body:
        found.append("the trace attachment")
    return found


def case(id_: str, method: str, path: str, body: Any = None) -> Any:
    return pytest.param(method, path, body, id=id_)


def family(prefix: str, tag: str) -> list[Any]:
    mpu_body = {"path": "evil.bin", "num_parts": 2}
    return [
        case(f"{tag}-download", "GET", f"{prefix}/artifacts/{A_FILE}"),
        case(f"{tag}-upload", "PUT", f"{prefix}/artifacts/{A_DIR}/evil.txt", EVIL),
        case(f"{tag}-upload-fake-run", "PUT", f"{prefix}/artifacts/{{A_EXP}}/0123456789abcdef/artifacts/evil.txt", EVIL),
        case(f"{tag}-delete-file", "DELETE", f"{prefix}/artifacts/{A_FILE}"),
        case(f"{tag}-delete-experiment", "DELETE", f"{prefix}/artifacts/{{A_EXP}}"),
        case(f"{tag}-list-run", "GET", f"{prefix}/artifacts?path={A_DIR}"),
        case(f"{tag}-list-experiment", "GET", f"{prefix}/artifacts?path={{A_EXP}}"),
        case(f"{tag}-list-models", "GET", f"{prefix}/artifacts?path={{A_EXP}}/models/{{A_MODEL}}/artifacts"),
        case(f"{tag}-download-model", "GET", f"{prefix}/artifacts/{{A_EXP}}/models/{{A_MODEL}}/artifacts/MLmodel"),
        case(f"{tag}-download-attachment", "GET",
             f"{prefix}/artifacts/{{A_EXP}}/traces/{{A_TRACE}}/artifacts/attachments/{{A_ATT}}"),
        case(f"{tag}-mpu-create", "POST", f"{prefix}/mpu/create/{A_DIR}/evil.bin", mpu_body),
        case(f"{tag}-mpu-complete", "POST", f"{prefix}/mpu/complete/{A_DIR}/evil.bin",
             {"path": "evil.bin", "upload_id": "x", "parts": [{"part_number": 1, "etag": "x"}]}),
        case(f"{tag}-mpu-abort", "POST", f"{prefix}/mpu/abort/{A_DIR}/evil.bin", {"path": "evil.bin", "upload_id": "x"}),
        case(f"{tag}-presigned", "GET", f"{prefix}/presigned/{A_FILE}"),
        # path tricks that start in bob's own experiment or run
        case(f"{tag}-dotdot", "GET", f"{prefix}/artifacts/{{B_EXP}}/../{A_FILE}"),
        case(f"{tag}-dotdot-from-run", "GET", f"{prefix}/artifacts/{{B_EXP}}/{{B_RUN}}/artifacts/../../../{A_FILE}"),
        case(f"{tag}-pct-dotdot", "GET", f"{prefix}/artifacts/{{B_EXP}}/%2e%2e/{A_FILE}"),
        case(f"{tag}-pct-dotdot-upper", "GET", f"{prefix}/artifacts/{{B_EXP}}/%2E%2E/{A_FILE}"),
        case(f"{tag}-pct-slashes", "GET", f"{prefix}/artifacts/{{B_EXP}}%2F..%2F{{A_EXP}}%2F{{A_RUN}}%2Fartifacts%2F"
                                          "notes%2Fhello.txt"),
        case(f"{tag}-pct-slashes-direct", "GET", f"{prefix}/artifacts/{{A_EXP}}%2F{{A_RUN}}%2Fartifacts%2Fnotes%2F"
                                                 "hello.txt"),
        case(f"{tag}-double-encoded", "GET", f"{prefix}/artifacts/{{B_EXP}}/%252e%252e/{A_FILE}"),
        case(f"{tag}-backslash", "GET", f"{prefix}/artifacts/{{B_EXP}}\\..\\{{A_EXP}}\\{{A_RUN}}\\artifacts\\notes\\"
                                        "hello.txt"),
        case(f"{tag}-pct-backslash", "GET", f"{prefix}/artifacts/{{B_EXP}}%5C..%5C{{A_EXP}}%5C{{A_RUN}}%5Cartifacts"
                                            "%5Cnotes%5Chello.txt"),
        case(f"{tag}-double-slash", "GET", f"{prefix}/artifacts//{A_FILE}"),
        case(f"{tag}-absolute-pct", "GET", f"{prefix}/artifacts/%2F{A_FILE}"),
        case(f"{tag}-etc-passwd", "GET", f"{prefix}/artifacts/%2Fetc%2Fpasswd"),
        case(f"{tag}-escape-root", "GET", f"{prefix}/artifacts/{{B_EXP}}/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd"),
        case(f"{tag}-list-dotdot", "GET", f"{prefix}/artifacts?path={{B_EXP}}/../{A_DIR}"),
        case(f"{tag}-list-pct-dotdot", "GET", f"{prefix}/artifacts?path={{B_EXP}}%2F%2e%2e%2F{{A_EXP}}"),
        case(f"{tag}-list-absolute", "GET", f"{prefix}/artifacts?path=/{A_DIR}"),
        case(f"{tag}-list-etc", "GET", f"{prefix}/artifacts?path=/etc"),
        case(f"{tag}-list-up", "GET", f"{prefix}/artifacts?path={{B_EXP}}/../.."),
        case(f"{tag}-list-backslash", "GET", f"{prefix}/artifacts?path={{B_EXP}}\\..\\{{A_EXP}}"),
        case(f"{tag}-upload-dotdot", "PUT", f"{prefix}/artifacts/{{B_EXP}}/../{A_DIR}/evil-dotdot.txt", EVIL),
        case(f"{tag}-upload-pct-dotdot", "PUT", f"{prefix}/artifacts/{{B_EXP}}/%2e%2e/{A_DIR}/evil-pct.txt", EVIL),
        case(f"{tag}-upload-pct-slashes", "PUT", f"{prefix}/artifacts/{{B_EXP}}%2F..%2F{{A_EXP}}%2F{{A_RUN}}%2F"
                                                 "artifacts%2Fevil-slash.txt", EVIL),
        case(f"{tag}-upload-backslash", "PUT", f"{prefix}/artifacts/{{B_EXP}}\\..\\{{A_EXP}}\\{{A_RUN}}\\artifacts\\"
                                               "evil-bs.txt", EVIL),
        case(f"{tag}-delete-dotdot", "DELETE", f"{prefix}/artifacts/{{B_EXP}}/{{B_RUN}}/artifacts/../../../{A_FILE}"),
        case(f"{tag}-mpu-create-dotdot", "POST", f"{prefix}/mpu/create/{{B_EXP}}/../{A_DIR}/evil-mpu.bin", mpu_body),
        case(f"{tag}-presigned-dotdot", "GET", f"{prefix}/presigned/{{B_EXP}}/../{A_FILE}"),
    ]


UI = [
    case("get-artifact", "GET", "/get-artifact?run_uuid={A_RUN}&path=notes/hello.txt"),
    case("get-artifact-dir", "GET", "/get-artifact?run_uuid={A_RUN}&path=dir/sub/b.bin"),
    case("get-artifact-dotdot", "GET", "/get-artifact?run_uuid={B_RUN}&path=../../../{A_EXP}/{A_RUN}/artifacts/notes/"
                                       "hello.txt"),
    case("get-artifact-pct-dotdot", "GET", "/get-artifact?run_uuid={B_RUN}&path=%2e%2e%2F%2e%2e%2F%2e%2e%2F{A_EXP}"
                                           "%2F{A_RUN}%2Fartifacts%2Fnotes%2Fhello.txt"),
    case("get-artifact-absolute", "GET", "/get-artifact?run_uuid={B_RUN}&path=/etc/passwd"),
    case("ajax-artifacts-list", "GET", "/ajax-api/2.0/mlflow/artifacts/list?run_uuid={A_RUN}"),
    case("api-artifacts-list", "GET", "/api/2.0/mlflow/artifacts/list?run_uuid={A_RUN}"),
    case("api-artifacts-list-run-id", "GET", "/api/2.0/mlflow/artifacts/list?run_id={A_RUN}&path=dir"),
    case("artifacts-list-dotdot", "GET", "/ajax-api/2.0/mlflow/artifacts/list?run_uuid={B_RUN}&path=../../../{A_EXP}"),
    case("logged-model-file", "GET", "/ajax-api/2.0/mlflow/logged-models/{A_MODEL}/artifacts/files?"
                                     "artifact_file_path=MLmodel"),
    case("logged-model-file-dotdot", "GET", "/ajax-api/2.0/mlflow/logged-models/{B_MODEL}/artifacts/files?"
                                            "artifact_file_path=../../../../{A_EXP}/models/{A_MODEL}/artifacts/MLmodel"),
    case("logged-model-dirs", "GET", "/api/2.0/mlflow/logged-models/{A_MODEL}/artifacts/directories"),
    case("ajax-logged-model-dirs", "GET", "/ajax-api/2.0/mlflow/logged-models/{A_MODEL}/artifacts/directories"),
    case("trace-data-v3", "GET", "/ajax-api/3.0/mlflow/get-trace-artifact?request_id={A_TRACE}"),
    case("trace-data-v2", "GET", "/ajax-api/2.0/mlflow/get-trace-artifact?request_id={A_TRACE}"),
    case("trace-attachment", "GET", "/ajax-api/3.0/mlflow/get-trace-artifact?request_id={A_TRACE}&path={A_ATT}"),
    case("trace-attachment-via-own-trace", "GET", "/ajax-api/3.0/mlflow/get-trace-artifact?request_id={B_TRACE}&"
                                                  "path=../../../../{A_EXP}/traces/{A_TRACE}/artifacts/attachments/"
                                                  "{A_ATT}"),
    case("model-version-artifact", "GET", "/model-versions/get-artifact?name={A_NAME}&version={A_VERSION}&path=MLmodel"),
    case("presigned-download-url", "POST", "/api/2.0/mlflow/artifacts/presigned-download-url",
         {"run_id": "{A_RUN}", "path": "notes/hello.txt"}),
    case("presigned-upload-url-run", "POST", "/api/2.0/mlflow/artifacts/presigned-upload-url",
         {"run_id": "{A_RUN}", "path": "evil.txt"}),
    case("presigned-upload-url-model", "POST", "/api/2.0/mlflow/artifacts/presigned-upload-url",
         {"model_id": "{A_MODEL}", "path": "evil.txt"}),
    case("ui-upload-artifact", "POST", "/ajax-api/2.0/mlflow/upload-artifact?run_uuid={A_RUN}&path=evil-ui.txt", EVIL),
]


def _fill(template: str, values: dict[str, str]) -> str:
    for k, v in values.items():
        template = template.replace("{" + k + "}", v)
    return template


def _body(body: Any, values: dict[str, str]) -> bytes | None:
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    return json.dumps(json.loads(_fill(json.dumps(body), values))).encode()


@pytest.mark.parametrize(("method", "path", "body"), family(API, "api") + family(AJAX, "ajax") + UI)
def test_bob_is_refused(gate: ArtGate, alpha_log: Logged, beta_log: Logged, alpha_version: Version,
                        method: str, path: str, body: Any) -> None:
    values = refs(alpha_log, beta_log, alpha_version)
    raw = _fill(path, values)
    status, content = raw_request(gate.url, method, raw, token=gate.token(BOB), body=_body(body, values))
    assert status in (400, 403), f"{method} {raw} -> {status}: {content[:400]!r}"
    assert not leaks(alpha_log, content), f"{method} {raw} -> {status} shows {leaks(alpha_log, content)}"


def test_bob_root_listing_shows_no_alpha_experiment(gate: ArtGate, alpha_log: Logged) -> None:
    for prefix in (API, AJAX):
        for raw in (f"{prefix}/artifacts", f"{prefix}/artifacts?path=", f"{prefix}/artifacts?path=/"):
            status, content = raw_request(gate.url, "GET", raw, token=gate.token(BOB))
            assert status in (200, 400, 403), f"{raw} -> {status}: {content[:300]!r}"
            if status == 200:
                listed = [f.get("path") for f in json.loads(content).get("files", [])]
                assert alpha_log.exp_id not in listed, f"{raw} lists alice's experiment: {listed}"


@pytest.mark.parametrize(("first", "second"), [("B_EXP", "A_EXP"), ("A_EXP", "B_EXP")])
def test_bob_duplicate_path_parameters(gate: ArtGate, alpha_log: Logged, beta_log: Logged, alpha_version: Version,
                                       first: str, second: str) -> None:
    """`?path=` given twice: whichever one the gate authorizes must be the one it serves."""
    values = refs(alpha_log, beta_log, alpha_version)
    for prefix in (API, AJAX):
        raw = f"{prefix}/artifacts?path={values[first]}&path={values[second]}"
        status, content = raw_request(gate.url, "GET", raw, token=gate.token(BOB))
        assert status in (200, 400, 403), f"{raw} -> {status}: {content[:300]!r}"
        assert alpha_log.run_id.encode() not in content or status != 200, f"{raw} lists alice's runs: {content!r}"
        raw = f"/ajax-api/2.0/mlflow/artifacts/list?run_uuid={values['B_RUN' if first == 'B_EXP' else 'A_RUN']}" \
              f"&run_uuid={values['A_RUN' if first == 'B_EXP' else 'B_RUN']}"
        status, content = raw_request(gate.url, "GET", raw, token=gate.token(BOB))
        assert status in (200, 400, 403), f"{raw} -> {status}: {content[:300]!r}"
        if status == 200:
            assert b"notes" not in content, f"{raw} lists alice's run: {content!r}"


def test_bob_graphql_list_artifacts(gate: ArtGate, alpha_log: Logged) -> None:
    query = 'query { mlflowListArtifacts(input: {runId: "RUN"}) { files { path isDir fileSize } } }'.replace(
        "RUN", alpha_log.run_id)
    for path in ("/graphql", "/ajax-api/graphql"):
        status, content = raw_request(gate.url, "POST", path, token=gate.token(BOB),
                                      body=json.dumps({"query": query}).encode())
        assert status in (200, 400, 403), f"{path} -> {status}: {content[:300]!r}"
        assert b"notes" not in content and b"hello.txt" not in content, f"{path} lists alice's run: {content!r}"


def test_bob_with_the_mlflow_client(gate: ArtGate, alpha_log: Logged, alpha_version: Version) -> None:
    import mlflow.sklearn

    bob = gate.client(BOB)
    attempts: list[tuple[str, Callable[[], Any]]] = [
        ("download run artifacts", lambda: mlflow.artifacts.download_artifacts(
            run_id=alpha_log.run_id, artifact_path="notes", dst_path=tempfile.mkdtemp())),
        ("list run artifacts", lambda: bob.list_artifacts(alpha_log.run_id)),
        ("log into alice's run", lambda: bob.log_text(alpha_log.run_id, "evil", "evil-client.txt")),
        ("load alice's logged model", lambda: mlflow.sklearn.load_model(alpha_log.model_uri)),
        ("download the model version", lambda: mlflow.artifacts.download_artifacts(
            f"models:/{alpha_version.name}/{alpha_version.version}", dst_path=tempfile.mkdtemp())),
        ("register alice's model as beta's", lambda: mlflow.register_model(alpha_log.model_uri, "beta-stolen")),
        ("mlflow-artifacts URI", lambda: mlflow.artifacts.download_artifacts(
            f"mlflow-artifacts:/{alpha_log.exp_id}/{alpha_log.run_id}/artifacts/notes/hello.txt",
            dst_path=tempfile.mkdtemp())),
    ]
    failures = []
    with gate.as_user(BOB):
        for what, attempt in attempts:
            try:
                with denied():
                    attempt()
            except AssertionError as exc:
                failures.append(f"{what}: {exc}")
    assert not failures, "\n".join(failures)


INTERNAL_CASES = [
    pytest.param(None, id="no-credential"),
    pytest.param("alice-bearer", id="alice-token"),
    pytest.param("bob-bearer", id="bob-token"),
    pytest.param("alice-basic", id="alice-basic"),
    pytest.param("garbage-bearer", id="garbage-token"),
    pytest.param("internal-basic-user", id="internal-token-as-username"),
]


@pytest.mark.parametrize("cred", INTERNAL_CASES)
def test_internal_endpoint_needs_the_internal_token(gate: ArtGate, alpha_log: Logged, cred: str | None) -> None:
    headers: dict[str, str] = {}
    if cred == "alice-bearer":
        headers["Authorization"] = f"Bearer {gate.token(ALICE)}"
    elif cred == "bob-bearer":
        headers["Authorization"] = f"Bearer {gate.token(BOB)}"
    elif cred == "alice-basic":
        headers["Authorization"] = "Basic " + base64.b64encode(f"x:{gate.token(ALICE)}".encode()).decode()
    elif cred == "garbage-bearer":
        headers["Authorization"] = "Bearer mgi_" + "0" * 64
    elif cred == "internal-basic-user":
        headers["Authorization"] = "Basic " + base64.b64encode(f"{gate.internal_token}:".encode()).decode()
    base = INTERNAL_PREFIX
    requests = [
        ("GET", f"{base}/{alpha_log.run_prefix}/notes/hello.txt", None),
        ("GET", f"{base}?path={alpha_log.run_prefix}", None),
        ("GET", f"{base}?path=", None),
        ("PUT", f"{base}/{alpha_log.run_prefix}/evil-internal.txt", EVIL),
        ("DELETE", f"{base}/{alpha_log.run_prefix}/notes/hello.txt", None),
        ("POST", f"/_gate/internal/api/2.0/mlflow-artifacts/mpu/create/{alpha_log.run_prefix}/evil.bin",
         json.dumps({"path": "evil.bin", "num_parts": 1}).encode()),
    ]
    for method, raw, body in requests:
        status, content = raw_request(gate.url, method, raw, body=body, headers=headers)
        assert status in (401, 403), f"{method} {raw} with {cred} -> {status}: {content[:300]!r}"
        assert not leaks(alpha_log, content)


def test_internal_endpoint_serves_the_upstream(gate: ArtGate, alpha_log: Logged) -> None:
    """Positive control for the refusals above: with the internal token, the same request is answered."""
    status, content = raw_request(gate.url, "GET", f"{INTERNAL_PREFIX}/{alpha_log.run_prefix}/notes/hello.txt",
                                  token=gate.internal_token)
    assert status == 200 and content == alpha_log.files["notes/hello.txt"], (status, content[:300])


def test_alice_artifacts_intact_after_the_attempts(gate: ArtGate, alpha_log: Logged, beta_log: Logged) -> None:
    """Runs after the refusals above: nothing of alice's was changed, nothing of bob's was planted."""
    s3 = gate.s3
    keys = s3.keys_in(BUCKETS["alpha"], f"mlflow/{alpha_log.exp_id}/", who="alpha")
    for path, content in alpha_log.expected_paths().items():
        assert f"mlflow/{path}" in keys, f"mlflow/{path} is gone"
        if content is not None:
            assert s3.get(BUCKETS["alpha"], f"mlflow/{path}", who="alpha") == content
    planted = [k for b in BUCKETS.values() for k in s3.keys_in(b, "") if "evil" in k]
    assert not planted, planted
    on_disk = [p for root in (gate.default_root, gate.gamma_root) if root.exists()
               for p in root.rglob("*") if "evil" in p.name]
    assert not on_disk, on_disk
    with gate.as_user(ALICE) as alice:
        assert {f.path for f in alice.list_artifacts(alpha_log.run_id)} == {"notes", "dir"}


def _multipart_with_body_path(gate: ArtGate, user: str, url_path: str, body_path: str) -> None:
    """mpu/create + one part + complete, with a file name in the body that tries to leave the URL's directory.
    The gate may refuse it (4xx) or keep the upload in the URL's directory; either way it must not escape."""
    token = gate.token(user)
    status, body = raw_request(gate.url, "POST", f"{API}/mpu/create/{url_path}", token=token,
                               body=json.dumps({"path": body_path, "num_parts": 1}).encode())
    if status != 200:
        assert status in (400, 403), (status, body[:300])
        return
    created = json.loads(body)
    part = raw_request(gate.url, "PUT", created["credentials"][0]["url"].split(gate.url, 1)[-1],
                       body=b"planted through a multipart body path")
    raw_request(gate.url, "POST", f"{API}/mpu/complete/{url_path}", token=token, body=json.dumps({
        "path": body_path, "upload_id": created["upload_id"], "parts": [{"part_number": 1, "etag": "x"}]}).encode())
    assert part[0] in (200, 400, 403, 404), part


def test_multipart_body_path_cannot_escape(gate: ArtGate, alpha_log: Logged, beta_log: Logged,
                                           shared_log: Logged) -> None:
    s3 = gate.s3
    # beta's run -> alice's run (another team's store)
    _multipart_with_body_path(gate, BOB, beta_log.run_prefix,
                              f"../../../{alpha_log.run_prefix}/mpubody.bin")
    assert not [k for k in s3.keys_in(BUCKETS["alpha"], "") if "mpubody" in k]
    assert not [k for k in s3.keys_in(BUCKETS["beta"], "") if "/../" in k or
                ("mpubody" in k and not k.startswith(f"mlflow/{beta_log.run_prefix}/"))]
    # a shared run (default store) -> an experiment of a name no team owns, in the same folder store
    root = gate.client(ROOT)
    hidden = root.create_experiment(f"unowned/hidden-{alpha_log.marker}")
    hidden_run = root.create_run(hidden).info.run_id
    root.log_text(hidden_run, "admin only", "secret.txt")
    assert (gate.default_root / hidden / hidden_run / "artifacts" / "secret.txt").is_file()
    _multipart_with_body_path(gate, BOB, shared_log.run_prefix,
                              f"../../../{hidden}/{hidden_run}/artifacts/mpubody.bin")
    _multipart_with_body_path(gate, BOB, shared_log.run_prefix, f"/{hidden}/{hidden_run}/artifacts/mpubody.bin")
    planted = [p for p in (gate.default_root / hidden).rglob("*") if "mpubody" in p.name]
    assert not planted, planted
    with gate.http(BOB) as h:
        r = h.get(f"{API}/artifacts/{hidden}/{hidden_run}/artifacts/secret.txt")
    assert r.status_code == 403 and b"admin only" not in r.content, (r.status_code, r.text[:300])
