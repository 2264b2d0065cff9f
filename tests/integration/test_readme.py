"""The README's grpcurl session works when pasted: it is extracted and run as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.integration.test_grpcurl import AUTHORITY, _environment, served_process

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
    # The session runs from a checkout after `make run`: .venv/ and var/admin-token beside it.
    (tmp_path / "var").mkdir()
    (tmp_path / ".venv").symlink_to(VENV)
    with served_process(tmp_path) as served:
        (tmp_path / "var" / "admin-token").write_text(served.admin_token + "\n")
        script = _session().replace("ADDR=127.0.0.1:50051", f"ADDR={served.address}")
        assert f"ADDR={served.address}" in script
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=_environment(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{served.log.read_text()}"
    answers = run.stdout
    assert "authority.v1.TokenAuthority" in answers
    assert answers.count('"valid": true') == 1
    assert "REASON_PERMISSION_DENIED" in answers
    assert "REASON_REVOKED" in answers
    assert answers.index("REASON_PERMISSION_DENIED") < answers.index("REASON_REVOKED")
