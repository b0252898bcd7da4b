"""Training runs shared between the tests of a module."""

import shutil
from pathlib import Path


def copy_of(run: Path, tmp_path: Path) -> Path:
    """The run copied (as `cp -r`) into tmp_path under its own name: the run_name a resume of it is checked against."""
    return Path(shutil.copytree(run, tmp_path / run.name))
