"""The command line as a person meets it (proxy/cli.py): help and defaults on every flag, --version, durations
with a unit, `serve` refusing a busy port at once, Ctrl-C without a traceback."""
from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path

import pytest

from proxy import __version__, cli

REPO = Path(__file__).resolve().parents[2]
KEY = "unit-test-secret-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_GATE_PORT", "MLFLOW_GATE_HOST", "MLFLOW_GATE_UPSTREAM", "MLFLOW_GATE_POLICY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_GATE_SECRET_KEY", KEY)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"mlflow-gate {__version__}"


def _parsers(parser: argparse.ArgumentParser, name: str = "mlflow-gate") -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                found += _parsers(child, f"{name} {sub}")
    return found


def test_every_flag_has_help_and_serve_says_defaults_and_variables() -> None:
    for name, parser in _parsers(cli._parser()):
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help text"
    serve = dict(_parsers(cli._parser()))["mlflow-gate serve"].format_help()
    for flag, default in (("--host", "127.0.0.1"), ("--port", "5000"), ("--backend-store-uri", "sqlite:///mlflow.db"),
                          ("--metrics-host", "127.0.0.1"), ("--policy", "policies/example.yaml")):
        assert flag in serve and default in serve, (flag, serve)
    assert "[MLFLOW_GATE_PORT]" in serve and "[MLFLOW_GATE_UPSTREAM]" in " ".join(serve.split())
    token = dict(_parsers(cli._parser()))["mlflow-gate token create"].format_help()
    assert "(default: 30d)" in token


@pytest.mark.parametrize("argv", [["token", "create", "--user", "bob@x.test", "--expires-in", "30"],
                                  ["login", "http://127.0.0.1:9", "--expires-in", "30"]])
def test_a_duration_without_a_unit_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 1
    err = capsys.readouterr()
    assert "'30' has no unit" in err.err and "30d" in err.err and "mgt_" not in err.out


def test_serve_on_a_busy_port_fails_at_once_naming_it(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_: object, **__: object) -> None:
        raise AssertionError("serve started something although its port is taken")

    monkeypatch.setattr(cli, "_run", never)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        start = time.monotonic()
        code = cli.main(["serve", "--policy", str(REPO / "policies/example.yaml"), "--port", str(port)])
    assert code == 1 and time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port} is already in use" in err and "--port" in err and "MLFLOW_GATE_PORT" in err


def test_serve_without_mlflow_says_what_to_install(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert cli.main(["serve", "--policy", str(REPO / "policies/example.yaml"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "needs the mlflow package" in err and "mlflow-gate[embedded]" in err and "--upstream" in err


def test_ctrl_c_ends_with_one_line_and_no_traceback(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "serve", interrupted)
    assert cli.main(["serve"]) == 130
    assert capsys.readouterr().err == "mlflow-gate: stopped.\n"
