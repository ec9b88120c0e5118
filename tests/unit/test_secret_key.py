"""Where the secret key lives when MLFLOW_GATE_SECRET_KEY is unset: the file MLFLOW_GATE_SECRET_KEY_FILE names,
else one per user under $XDG_STATE_HOME (default ~/.local/state), the same whatever the working folder."""
from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from proxy.settings import secret_key, secret_key_file, secret_key_source


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh home folder, no key variables, and a working folder of its own."""
    for name in ("MLFLOW_GATE_SECRET_KEY", "MLFLOW_GATE_SECRET_KEY_FILE", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path / "home"


def test_the_key_is_made_once_per_user_not_per_folder(home: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    key = secret_key()
    path = home / ".local/state/mlflow-gate/secret-key"
    assert secret_key_file() == path and path.read_text().strip() == key and len(key) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert secret_key() == key                                   # the same key from another working folder
    assert not (elsewhere / ".mlflow-gate").exists() and not (tmp_path / "work/.mlflow-gate").exists()


def test_xdg_state_home_is_used_when_absolute(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert secret_key_file() == tmp_path / "state/mlflow-gate/secret-key"
    secret_key()
    assert (tmp_path / "state/mlflow-gate/secret-key").is_file()
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")      # the XDG spec: relative paths are ignored
    assert secret_key_file() == home / ".local/state/mlflow-gate/secret-key"


def test_the_key_file_variable_names_a_file_that_must_exist(home: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_GATE_SECRET_KEY_FILE", str(tmp_path / "mounted/secret"))
    with pytest.raises(ValueError, match="MLFLOW_GATE_SECRET_KEY_FILE=.*does not exist"):
        secret_key()
    assert not (tmp_path / "mounted").exists(), "a missing key file is never replaced by a new key"
    (tmp_path / "mounted").mkdir()
    (tmp_path / "mounted/secret").write_text("short\n")
    with pytest.raises(ValueError, match="too short"):
        secret_key()
    (tmp_path / "mounted/secret").write_text("a-key-from-a-kubernetes-secret-0123456789\n")
    assert secret_key() == "a-key-from-a-kubernetes-secret-0123456789"
    assert secret_key_source() == str(tmp_path / "mounted/secret")


def test_the_environment_key_comes_first(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_GATE_SECRET_KEY", "an-environment-key-0123456789")
    assert secret_key() == "an-environment-key-0123456789" and secret_key_source() == "MLFLOW_GATE_SECRET_KEY"
    assert not (home / ".local").exists()


def test_an_old_per_folder_key_is_ignored_with_a_warning(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = Path(".mlflow-gate/secret-key")
    old.parent.mkdir()
    old.write_text("the-old-per-folder-key-0123456789\n")
    logger = logging.getLogger("mlflow_gate")        # (the gate's logging may have stopped it propagating)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="mlflow_gate"):
            key = secret_key()
    finally:
        logger.removeHandler(caplog.handler)
    assert key != "the-old-per-folder-key-0123456789"
    assert "no longer read" in caplog.text and f"MLFLOW_GATE_SECRET_KEY_FILE={old.resolve()}" in caplog.text
