"""The shape of the project, checked: what a device loads, who talks SQL, where errors
live, and that importing a module does nothing but define things."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("storage_core", "ferry", "flows", "tasks", "deployments", "bench")
SERVER_SIDE = ("fastapi", "starlette", "sqlalchemy", "alembic", "boto3", "botocore", "prefect", "pyarrow", "uvicorn")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        path = ROOT / package
        for info in pkgutil.walk_packages([str(path)], prefix=f"{package}."):
            if ".migrations" not in info.name and not info.name.endswith(".__main__"):
                names.append(info.name)
    return sorted(names)


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERRY_", "PREFECT_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_device_side_loads_nothing_of_the_server(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "import storage_core.device\n"
        "from storage_core.device.client import device_upload\n"
        "import storage_core.device.archive\n"
        "from storage_core.device.frame import decode_frame\n"
        "from storage_core.device.stream import stream_append  # pyarrow only once a file is read\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(SERVER_SIDE)!r}))))\n"
    )
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_only_the_catalog_imports_sqlalchemy() -> None:
    offenders = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith("storage_core/catalog/"):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                if any(n == "sqlalchemy" or n.startswith(("sqlalchemy.", "alembic")) for n in names):
                    offenders.append(f"{relative}:{node.lineno}")
    assert offenders == []


def test_every_public_error_class_lives_in_the_error_tree() -> None:
    from storage_core import errors

    elsewhere, without_flag = [], []
    for name in _modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if not (inspect.isclass(value) and issubclass(value, BaseException)):
                continue
            if value.__module__ != name or attr.startswith("_"):
                continue
            if name != "storage_core.errors":
                elsewhere.append(f"{name}.{attr}")
    for value in vars(errors).values():
        if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == "storage_core.errors":
            if not issubclass(value, errors.FerryError) or not isinstance(value.retryable, bool):
                without_flag.append(value.__name__)
    assert elsewhere == []
    assert without_flag == []


def test_importing_any_module_creates_nothing_and_writes_no_environment(tmp_path: Path) -> None:
    modules = _modules()
    code = (
        "import importlib, json, os\n"
        "before = dict(os.environ)\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "after = dict(os.environ)\n"
        "print(json.dumps(sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))))\n"
    )
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("module", ["storage_core.errors", "storage_core.device.client"])
def test_modules_import_in_a_fresh_interpreter(module: str, tmp_path: Path) -> None:
    done = _run(f"import {module}", tmp_path)
    assert done.returncode == 0, done.stderr
