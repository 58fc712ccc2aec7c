"""Packaging and set-up: the project installs as a package with a `samdemo` command, pinned like
requirements.txt, and the set-up scripts pick the interpreter they promise."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from samdemo.__main__ import COMMANDS

ROOT = Path(__file__).resolve().parent.parent


def requirement_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_pyproject_pins_what_requirements_pin_and_exposes_the_cli():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "samdemo"
    assert project["dependencies"] == requirement_lines(ROOT / "requirements.txt")
    assert all("==" in d for d in project["dependencies"] + project["optional-dependencies"]["test"])
    test_only = [r for r in requirement_lines(ROOT / "requirements-test.txt") if r not in project["dependencies"]]
    assert project["optional-dependencies"]["test"] == test_only
    assert project["scripts"] == {"samdemo": "samdemo.__main__:main"}


def test_the_console_entry_point_has_every_subcommand():
    done = subprocess.run([sys.executable, "-c", "import sys; from samdemo.__main__ import main; sys.exit(main())",
                           "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0
    for command in COMMANDS:
        assert command in done.stdout
    assert set(COMMANDS) >= {"attack", "evaluate", "train-base", "train-adapter", "push-adapter"}


def dry_run(tmp_path, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SAMDEMO_PYTHON")}
    done = subprocess.run(["bash", str(ROOT / "scripts/install.sh")], capture_output=True, text=True,
                          env={**base, "SAMDEMO_DRY_RUN": "1", **env}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def fake_env(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").symlink_to(sys.executable)
    return root


def test_install_uses_the_active_environment_or_its_own_venv(tmp_path):
    venv = fake_env(tmp_path / "venv")
    conda = fake_env(tmp_path / "conda")
    assert dry_run(tmp_path, VIRTUAL_ENV=str(venv)) == f"{venv}/bin/python"
    assert dry_run(tmp_path, CONDA_PREFIX=str(conda)) == f"{conda}/bin/python"
    # outside any environment: the project's own .venv (PEP 668 systems refuse system-wide installs)
    assert dry_run(tmp_path) == f"{ROOT}/.venv/bin/python"
    assert dry_run(tmp_path, SAMDEMO_PYTHON="/opt/python") == "/opt/python"
