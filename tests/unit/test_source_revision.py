"""A result row names the code that made it: this checkout's commit, or the installed package's version, never the
commit of a user's repository that happens to hold the environment the package is installed in."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning_sde
from lightning_sde.tracking import source_revision

PACKAGE = Path(lightning_sde.__file__).resolve().parent


def git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_in_its_checkout_the_revision_is_the_checkout_commit():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE.parent, capture_output=True, text=True,
                          check=True).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--", "lightning_sde", "configs"], cwd=PACKAGE.parent,
                             capture_output=True, text=True).stdout.strip() != ""  # a working tree being edited
    assert re.fullmatch(r"[0-9a-f]{40}", head) and source_revision() == head + ("-dirty" if changed else "")


def test_code_changed_since_the_commit_is_marked_dirty(tmp_path):
    """An edited checkout's results were attributed to its clean commit."""
    repo = tmp_path / "checkout"
    shutil.copytree(PACKAGE, repo / "lightning_sde", ignore=shutil.ignore_patterns("__pycache__", "configs"))
    (repo / ".gitignore").write_text("__pycache__/\n")  # as the project's: bytecode is no edit
    git("init", "-q", cwd=repo)
    git("add", "lightning_sde", ".gitignore", cwd=repo)
    git("commit", "-q", "-m", "ours", cwd=repo)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()

    def revision():
        return subprocess.run([sys.executable, "-c", "import lightning_sde.tracking as t; print(t.source_revision())"],
                              cwd=tmp_path, capture_output=True, text=True, check=True,
                              env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"}).stdout.strip()

    assert revision() == head
    with open(repo / "lightning_sde" / "samplers" / "__init__.py", "a") as fh:
        fh.write("# edited\n")
    assert revision() == f"{head}-dirty"
    git("checkout", "--", "lightning_sde", cwd=repo)
    assert revision() == head
    (repo / "lightning_sde" / "new_module.py").write_text("x = 1\n")  # a file not committed yet
    assert revision() == f"{head}-dirty"
    (repo / "lightning_sde" / "new_module.py").unlink()
    (repo / "configs").mkdir()
    (repo / "configs" / "mine.yaml").write_text("steps: 3\n")  # the configs made the result too
    assert revision() == f"{head}-dirty"


def test_installed_inside_another_repository_the_revision_is_the_package_version(tmp_path):
    project = tmp_path / "user_project"
    site = project / ".venv_site"
    shutil.copytree(PACKAGE, site / "lightning_sde", ignore=shutil.ignore_patterns("__pycache__", "configs"))
    git("init", "-q", cwd=project)
    git("commit", "-q", "--allow-empty", "-m", "theirs", cwd=project)
    theirs = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    out = subprocess.run([sys.executable, "-c", "import lightning_sde.tracking as t; print(t.__file__); "
                          "print(t.source_revision())"], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, check=True).stdout.split()
    assert out[0].startswith(str(site)), "the copy was imported"
    assert out[1] == f"lightning-sde=={lightning_sde.__version__}" != theirs


def test_a_repository_without_commits_gives_the_version_not_head(tmp_path):
    site = tmp_path / "fresh"
    shutil.copytree(PACKAGE, site / "lightning_sde", ignore=shutil.ignore_patterns("__pycache__", "configs"))
    git("init", "-q", cwd=site)  # the package's parent is the top level, but HEAD names no commit
    out = subprocess.run([sys.executable, "-c", "import lightning_sde.tracking as t; print(t.source_revision())"],
                         cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(site),
                                                                            "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == f"lightning-sde=={lightning_sde.__version__}"
