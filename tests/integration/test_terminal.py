"""The terminal as a newcomer meets it, with the real `mlflow-gate` console script (issue 12, items 1 and 6):
tokens made in any folder work (the key is the user's, not the folder's), a token signed with another key is a
401 that says so, durations need a unit, `serve` on a busy port fails at once before starting mlflow, Ctrl-C while
the embedded server starts leaves no traceback and no mlflow behind, `login` on a gate without an identity
provider says what to use instead. (One line per request and Ctrl-C while serving: test_operations.py.)"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.echo import EchoGate
from tests.support.gate import gate_command, gate_env, mint_token, start_gate
from tests.support.process import child_env, free_port, group_alive, log_tail

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = str(REPO / "policies" / "example.yaml")


def run(*args: str, cwd: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*gate_command(), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def test_a_token_made_in_another_folder_works_and_a_foreign_one_says_why(echo_gate: EchoGate,
                                                                          tmp_path: Path) -> None:
    """No MLFLOW_GATE_SECRET_KEY: the gate (working in one folder) and `token create` (in another) share the user's
    key in $XDG_STATE_HOME; nothing is written to either folder."""
    state, served, elsewhere = tmp_path / "state", tmp_path / "served", tmp_path / "elsewhere"
    elsewhere.mkdir()
    user_env = {"XDG_STATE_HOME": str(state), "MLFLOW_GATE_SECRET_KEY": ""}
    gate = start_gate(served, echo_gate.gate.upstream, backend="echo", env=user_env)
    try:
        made = run("token", "create", "--user", "bob@example.com", cwd=elsewhere, env=child_env(**user_env))
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip().splitlines()[-1]
        me = httpx.get(gate.url + "/_gate/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert me.status_code == 200 and me.json()["id"] == "bob@example.com", me.text
        assert (state / "mlflow-gate" / "secret-key").is_file()
        assert not (served / ".mlflow-gate").exists() and not (elsewhere / ".mlflow-gate").exists()

        foreign = mint_token("bob@example.com")          # signed with the tests' MLFLOW_GATE_SECRET_KEY
        r = httpx.get(gate.url + "/_gate/me", headers={"Authorization": f"Bearer {foreign}"}, timeout=30)
        assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHENTICATED"
        message = r.json()["message"]
        assert "signed with another key" in message and "/_gate/tokens" in message, message
        assert "MLFLOW_GATE_SECRET_KEY_FILE" in message and "mlflow-gate token create" in message, message
        inspected = run("token", "inspect", foreign, cwd=elsewhere, env=child_env(**user_env))
        assert inspected.returncode == 1 and str(state / "mlflow-gate" / "secret-key") in inspected.stderr

        bare = run("token", "create", "--user", "bob@example.com", "--expires-in", "30", cwd=elsewhere,
                   env=child_env(**user_env))
        assert bare.returncode == 1 and "'30' has no unit" in bare.stderr and "30d" in bare.stderr
        assert "mgt_" not in bare.stdout
    finally:
        gate.stop()


def test_serve_on_a_busy_port_fails_at_once_before_starting_mlflow(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        start = time.monotonic()
        r = run("serve", "--policy", EXAMPLE, "--port", str(port), cwd=tmp_path, env=gate_env())
        took = time.monotonic() - start
    assert r.returncode == 1, r.stderr
    assert f"127.0.0.1:{port} is already in use" in r.stderr and "--port" in r.stderr, r.stderr
    assert took < 15, f"{took:.1f} s: the embedded server must not be started first"
    assert "embedded" not in r.stderr and not (tmp_path / "mlflow.db").exists()


def test_ctrl_c_while_the_embedded_server_starts(tmp_path: Path) -> None:
    log = tmp_path / "gate.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*gate_command(), "serve", "--policy", EXAMPLE, "--port", str(free_port())],
                                cwd=tmp_path, env=gate_env(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, groups = time.monotonic() + 60, set()
        while not groups and time.monotonic() < deadline:  # the embedded mlflow server has been started
            assert proc.poll() is None, log_tail(log)
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], check=False, capture_output=True,
                                      text=True).stdout.split()
            groups = {os.getpgid(int(c)) for c in children if _alive(int(c))}
            time.sleep(0.1)
        assert groups and "embedded mlflow server is ready" not in log.read_text(), log_tail(log)
        proc.send_signal(signal.SIGINT)                   # what Ctrl-C sends the foreground process
        assert proc.wait(timeout=60) == 130, log_tail(log)
        text = log.read_text()
        assert "mlflow-gate: stopped." in text and "Traceback" not in text, text[-3000:]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(group_alive(g) for g in groups):
            time.sleep(0.2)
        assert not any(group_alive(g) for g in groups), "the embedded mlflow server outlived the gate"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _alive(pid: int) -> bool:
    try:
        os.getpgid(pid)
        return True
    except ProcessLookupError:
        return False


def test_login_on_a_gate_without_an_identity_provider_says_what_to_use(echo_gate: EchoGate, tmp_path: Path) -> None:
    r = run("login", echo_gate.gate.url, cwd=tmp_path, env=gate_env(HOME=str(tmp_path)))
    assert r.returncode == 1
    assert f"{echo_gate.gate.url} has no identity provider" in r.stderr, r.stderr
    assert f"{echo_gate.gate.url}/_gate/tokens" in r.stderr and "mlflow-gate token create" in r.stderr, r.stderr
    assert "MLFLOW_TRACKING_TOKEN" in r.stderr and not (tmp_path / ".mlflow").exists()
