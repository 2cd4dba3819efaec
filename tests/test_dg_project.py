"""`hardening dg-project` and pyproject.toml's `[tool.dg]` name the same code location as
workspace.yaml; the command refuses to overwrite. dg itself runs them in test_wheel.py and
test_dagster_from_root.py."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from click.testing import CliRunner

from hardening_pipeline.cli import main
from hardening_pipeline.dg_project import LOCATION_MODULE

ROOT = Path(__file__).resolve().parents[1]


def workspace_location() -> dict[str, str]:
    (entry,) = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"]
    return entry["python_module"]


def test_the_checkout_and_the_written_project_load_the_workspace_location(tmp_path: Path) -> None:
    location = workspace_location()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dg"]
    assert project["directory_type"] == "project"
    assert project["project"]["code_location_target_module"] == location["module_name"]
    assert project["project"]["code_location_name"] == location["location_name"]

    result = CliRunner().invoke(main, ["dg-project", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = tomllib.loads((tmp_path / "dg.toml").read_text())
    assert written["directory_type"] == "project"
    assert written["project"]["code_location_target_module"] == LOCATION_MODULE
    assert written["project"]["code_location_name"] == location["location_name"]
    source = (tmp_path / f"{LOCATION_MODULE}.py").read_text()
    assert f"from {location['module_name']} import defs" in source


def test_dg_project_never_overwrites(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["dg-project", str(tmp_path)]).exit_code == 0
    again = runner.invoke(main, ["dg-project", str(tmp_path)])
    assert again.exit_code == 0 and "already there" in again.output
    (tmp_path / f"{LOCATION_MODULE}.py").write_text("defs = None\n")
    refused = runner.invoke(main, ["dg-project", str(tmp_path)])
    assert refused.exit_code == 2
    assert "already exists with other content" in refused.output
    assert (tmp_path / f"{LOCATION_MODULE}.py").read_text() == "defs = None\n"


def test_dg_project_names_a_missing_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["dg-project", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "is not a folder" in result.output
    assert not (tmp_path / "nowhere").exists()
