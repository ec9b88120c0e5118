"""`tests.integration.utils` for MLflow's own suite: `invoke_cli_runner`."""
from __future__ import annotations

from typing import Any

from click.testing import CliRunner


def invoke_cli_runner(*args: Any, **kwargs: Any) -> Any:
    """Invoke a click command with CliRunner and check it succeeded."""
    result = CliRunner().invoke(*args, **kwargs)
    assert result.exit_code == 0, f"Got non-zero exit code {result.exit_code}. Output is: {result.output}"
    return result
