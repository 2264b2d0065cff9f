"""The README's grpcurl session works when pasted: it is extracted and run as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.integration.test_grpcurl import (
    AUTHORITY,
    _environment,
    _free_port,
    _stop,
    _wait_until_serving,
)

README = Path(__file__).resolve().parents[2] / "README.md"
VENV = Path(AUTHORITY).parent.parent


def _session() -> str:
    text = README.read_text()
    block = re.search(
        r"<!-- readme-session:start -->\n```bash\n(.*?)```\n<!-- readme-session:end -->",
        text,
        re.S,
    )
    assert block, "README.md lost its marked grpcurl session"
    return block.group(1)


def test_the_readme_grpcurl_session_runs_as_written_against_a_served_process(
    tmp_path: Path,
) -> None:
    environment = _environment(tmp_path)
    (tmp_path / "var").mkdir()
    (tmp_path / ".venv").symlink_to(VENV)
    bootstrap = subprocess.run(
        [str(AUTHORITY), "bootstrap", "--quiet"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bootstrap.returncode == 0, bootstrap.stderr
    (tmp_path / "var" / "admin-token").write_text(bootstrap.stdout)
    address = f"127.0.0.1:{_free_port()}"
    log = tmp_path / "serve.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [str(AUTHORITY), "serve", "--listen", address],
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_serving(process, address, log)
        script = _session().replace("ADDR=127.0.0.1:50051", f"ADDR={address}")
        assert f"ADDR={address}" in script
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        _stop(process)

    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{log.read_text()}"
    answers = run.stdout
    assert "authority.v1.TokenAuthority" in answers
    assert answers.count('"valid": true') == 1
    assert "REASON_PERMISSION_DENIED" in answers
    assert "REASON_REVOKED" in answers
    assert answers.index("REASON_PERMISSION_DENIED") < answers.index("REASON_REVOKED")
