"""The folder store (atomic writes, listing, multipart) and the artifact protocol's routing, without servers."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.artifact_server import internal_token, route_of
from proxy.artifacts import ArtifactMissing, FileStore
from proxy.identity import Identity
from proxy.policy import Team
from proxy.rewrite import STORE_TAG, experiment_create, experiment_tag


async def chunks(*parts: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for i, part in enumerate(parts):
        if fail_after is not None and i == fail_after:
            raise ConnectionResetError("client went away")
        yield part


def read_all(store: FileStore, path: str) -> bytes:
    async def go() -> bytes:
        _, it = await store.open(path)
        return b"".join([c async for c in it])
    return asyncio.run(go())


def test_file_store_round_trip_and_listing(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}/root", "test store")
    assert asyncio.run(store.write("1/run/artifacts/a.txt", chunks(b"hel", b"lo"))) == 5
    assert read_all(store, "1/run/artifacts/a.txt") == b"hello"
    listing = asyncio.run(store.listdir("1/run/artifacts"))
    assert [(f.path, f.is_dir, f.size) for f in listing] == [("a.txt", False, 5)]
    assert [(f.path, f.is_dir) for f in asyncio.run(store.listdir("1"))] == [("run", True)]
    asyncio.run(store.delete("1/run"))
    with pytest.raises(ArtifactMissing):
        asyncio.run(store.open("1/run/artifacts/a.txt"))


def test_an_interrupted_upload_leaves_nothing(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path), "test store")
    with pytest.raises(ConnectionResetError):
        asyncio.run(store.write("1/x.bin", chunks(b"a" * 10, b"b" * 10, fail_after=1)))
    assert not (tmp_path / "1" / "x.bin").exists()
    assert list((tmp_path / "1").iterdir()) == []


def test_file_store_multipart(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path), "test store")

    async def go() -> None:
        upload = await store.mpu_create("1/big.bin")
        e2 = await store.mpu_part("1/big.bin", upload, 2, chunks(b"world"))
        e1 = await store.mpu_part("1/big.bin", upload, 1, chunks(b"hello "))
        assert not (tmp_path / "1" / "big.bin").exists()
        await store.mpu_complete("1/big.bin", upload, [(2, e2), (1, e1)])

    asyncio.run(go())
    assert read_all(store, "1/big.bin") == b"hello world"
    assert [f.path for f in asyncio.run(store.listdir(""))] == ["1"]     # upload state is hidden


def test_file_store_stays_inside_its_root(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path / "root"), "test store")
    (tmp_path / "secret.txt").write_text("x")
    with pytest.raises(ArtifactMissing):
        asyncio.run(store.open("../secret.txt"))


@pytest.mark.parametrize(("method", "path", "query", "expected"), [
    ("GET", "/api/2.0/mlflow-artifacts/artifacts/1/r/a.txt", b"", ("download", "1/r/a.txt")),
    ("PUT", "/ajax-api/2.0/mlflow-artifacts/artifacts/1/r/a.txt", b"", ("upload", "1/r/a.txt")),
    ("DELETE", "/api/2.0/mlflow-artifacts/artifacts/1/r", b"", ("delete", "1/r")),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts", b"path=1/r/artifacts", ("list", "1/r/artifacts")),
    ("POST", "/api/2.0/mlflow-artifacts/mpu/create/1/r/a", b"", ("mpu_create", "1/r/a")),
    ("POST", "/api/2.0/mlflow-artifacts/mpu/complete/1/r/a", b"", ("mpu_complete", "1/r/a")),
    ("POST", "/api/2.0/mlflow-artifacts/mpu/abort/1/r/a", b"", ("mpu_abort", "1/r/a")),
    ("GET", "/api/2.0/mlflow-artifacts/presigned/1/r/a", b"", ("presigned", "1/r/a")),
    ("POST", "/api/2.0/mlflow-artifacts/artifacts/1/r/a", b"", (None, "")),
    ("GET", "/api/2.0/mlflow/runs/get", b"", (None, "")),
])
def test_artifact_routes(method: str, path: str, query: bytes, expected: tuple[str | None, str]) -> None:
    assert route_of(method, path, query) == expected


def test_internal_token_depends_on_the_secret() -> None:
    assert internal_token("a" * 20) != internal_token("b" * 20)
    assert internal_token("a" * 20).startswith("mgi_")


def test_new_experiments_of_a_team_with_a_store_carry_the_store_tag() -> None:
    team = Team("vision", artifact_root="s3://b/p")
    body = experiment_create({"name": "vision/x", "tags": [{"key": STORE_TAG, "value": "nlp"}]}, Identity("b"), team)
    assert {t["key"]: t["value"] for t in body["tags"]} == {STORE_TAG: "vision"}
    body = experiment_create({"name": "x", "tags": [{"key": STORE_TAG, "value": "nlp"}]}, Identity("b"), None)
    assert body["tags"] == []


def test_gate_tags_cannot_be_changed() -> None:
    from proxy.errors import PermissionDenied

    with pytest.raises(PermissionDenied):
        experiment_tag({"experiment_id": "1", "key": STORE_TAG, "value": "nlp"}, Identity("root"), None)
    assert experiment_tag({"experiment_id": "1", "key": "note", "value": "x"}, Identity("b"), None)["key"] == "note"


def test_a_folder_store_upload_id_serves_only_its_own_path(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path), "test store")
    upload = asyncio.run(store.mpu_create("1/mine.bin"))
    with pytest.raises(ArtifactMissing):
        asyncio.run(store.mpu_part("2/theirs.bin", upload, 1, chunks(b"x")))
    with pytest.raises(ArtifactMissing):
        asyncio.run(store.mpu_complete("2/theirs.bin", upload, [(1, "e")]))
