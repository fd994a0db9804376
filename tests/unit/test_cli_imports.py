"""Commands that answer in a second: `ferry query`, `ferry transactions list` and
`ferry --help` load none of the heavy libraries (Prefect, boto3, pyarrow, FastAPI, uvicorn),
and a catalog already at the newest schema opens without Alembic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage_core.catalog.db import MIGRATIONS, VERSION_TABLE, Catalog, code_head_revision

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("prefect", "boto3", "botocore", "pyarrow", "fastapi", "starlette", "uvicorn", "alembic")

# runs the CLI as `python -m ferry.cli` does, then writes which heavy packages were loaded
WRAPPER = """
import json, sys
heavy = set(sys.argv[2].split(","))
out = sys.argv[1]
sys.argv = ["ferry", *sys.argv[3:]]
from ferry.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
with open(out, "w") as f:
    json.dump({"code": code, "loaded": sorted({m.split(".")[0] for m in sys.modules} & heavy)}, f)
"""


def _ferry_modules(args: list[str], tmp_path: Path, database_url: str) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERRY_", "PREFECT_"))}
    env.update(PYTHONPATH=str(ROOT), FERRY_HOME=str(tmp_path / "home"), FERRY_DATABASE_URL=database_url)
    report = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(report), ",".join(HEAVY), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert report.exists(), done.stderr
    return json.loads(report.read_text()), done.stdout


@pytest.mark.parametrize("args", [["query", "--json"], ["transactions", "list", "--json"], ["--help"]])
def test_quick_commands_load_no_heavy_library(args: list[str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    Catalog(url).dispose()  # migrated once, as any earlier command leaves it
    result, stdout = _ferry_modules(args, tmp_path, url)
    assert result["code"] in (0, None), stdout
    assert result["loaded"] == []
    if "--json" in args:
        assert json.loads(stdout) == []


def test_the_code_head_is_alembics_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert [code_head_revision()] == ScriptDirectory.from_config(config).get_heads()


def test_a_catalog_behind_the_head_is_still_migrated(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from storage_core.catalog import db

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = Catalog(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with catalog.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "-1")
    assert not catalog._at_head()
    db._migrated.discard(url)  # a new process: nothing migrated yet
    catalog.migrate()
    with catalog.engine.connect() as connection:
        assert connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == [code_head_revision()]
    assert catalog._at_head()
    catalog.dispose()
