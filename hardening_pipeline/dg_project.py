"""The two files that let Dagster's `dg` commands load the installed package from any folder.

`dg` only works inside a project folder whose root module is a local file: it has no option to
name an installed module, unlike `dagster ... -m`. So the folder gets `dg.toml` and a one-line
module that re-exports the installed package's definitions; in the repository root,
pyproject.toml's `[tool.dg]` does the same job for the checkout.
"""

from __future__ import annotations

from pathlib import Path

from hardening_pipeline.errors import ConfigError

LOCATION_MODULE = "hardening_location"
CODE_LOCATION_NAME = "hardening_pipeline"

# The module is also the defs module: dg scans a defs folder for component YAML, and this
# project defines no components.
DG_TOML = f"""\
# Written by `hardening dg-project`: lets `dg check defs`, `dg list defs` and `dg dev` load the
# installed hardening_pipeline package from this folder.
directory_type = "project"

[project]
root_module = "{LOCATION_MODULE}"
defs_module = "{LOCATION_MODULE}"
code_location_target_module = "{LOCATION_MODULE}"
code_location_name = "{CODE_LOCATION_NAME}"
"""

LOCATION_SOURCE = """\
# Written by `hardening dg-project`: the installed package's definitions, for dg.toml.
from hardening_pipeline.definitions import defs

__all__ = ["defs"]
"""


def project_files(folder: Path) -> dict[Path, str]:
    return {folder / "dg.toml": DG_TOML, folder / f"{LOCATION_MODULE}.py": LOCATION_SOURCE}


def write_dg_project(folder: Path) -> list[Path]:
    """Write the files into `folder`; return the ones written (unchanged ones are left alone)."""
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder; create it first or name another one")
    files = project_files(folder)
    for path, text in files.items():
        if path.exists() and path.read_text() != text:
            raise ConfigError(
                f"{path} already exists with other content; move it away or run "
                "`hardening dg-project` in another folder"
            )
    written = []
    for path, text in files.items():
        if not path.exists():
            path.write_text(text)
            written.append(path)
    return written
