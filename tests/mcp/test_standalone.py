"""The proxy is SDK side: it imports none of the gateway's server (no FastAPI, SQLAlchemy,
Casbin, policy engines or ledger store), as the client does (DESIGN: the SDK's row)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVER_SIDE = ("fastapi", "sqlalchemy", "sqlmodel", "casbin", "regorus", "psycopg", "alembic")


def test_the_proxy_imports_without_the_server_side(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {SERVER_SIDE!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)

        sys.meta_path.insert(0, Refuse())
        import gateway.client.mcp.proxy

        ours = sorted(m for m in sys.modules if m.split(".")[0] in ("gateway", "ledger"))
        print(" ".join(ours))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANDATE_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert {"gateway.client.mcp.proxy", "gateway.client.mcp.upstream"} <= loaded
    sdk = {"gateway", "gateway.errors", "gateway.schemas"}
    assert all(m in sdk or m.startswith("gateway.client") for m in loaded), loaded
