"""The package as a user installs it: a wheel built from the checkout's files, installed without -e into a fresh
virtualenv (the heavy dependencies reused from this one, nothing downloaded), and every app run from a directory
outside the repository: the configs must come from the wheel."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(cmd, cwd, timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder of a venv with the wheel installed, a working directory outside the repository)."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # the files a clone has: tracked, plus new ones not ignored
    files = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO).splitlines()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", source],
        tmp)
    (wheel,) = (tmp / "dist").glob("lightning_sde-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", venv], tmp)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "reuse_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # after the venv's own
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], tmp)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return venv / "bin", elsewhere


def test_the_wheel_holds_every_subpackage_and_the_configs(installed):
    bin_dir, elsewhere = installed
    probe = ("import lightning_sde, pathlib, importlib.resources as r; "
             "print(lightning_sde.__file__); print(r.files('lightning_sde.configs') / 'train.yaml')")
    package_file, train_yaml = run([bin_dir / "python", "-c", probe], elsewhere).split()
    installed_root = Path(package_file).parent
    assert REPO not in installed_root.parents, f"imported the checkout, not the wheel: {installed_root}"
    assert Path(train_yaml).is_file() and installed_root in Path(train_yaml).parents
    source_packages = {p.parent.relative_to(REPO / "lightning_sde")
                       for p in (REPO / "lightning_sde").rglob("__init__.py")}
    wheel_packages = {p.parent.relative_to(installed_root) for p in installed_root.rglob("__init__.py")}
    assert source_packages | {Path("configs")} <= wheel_packages
    source_configs = {p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*.yaml")}
    wheel_configs = {p.relative_to(installed_root / "configs") for p in (installed_root / "configs").rglob("*.yaml")}
    assert source_configs == wheel_configs
    assert (installed_root / "metrics" / "weights" / "digits_features.pt").is_file()


def test_every_app_runs_from_outside_the_repository(installed):
    bin_dir, elsewhere = installed
    job = run([bin_dir / "lsde-train", "--cfg", "job", "experiment=toy2d"], elsewhere)
    assert "lightning_sde.module.ScoreModule" in job and "ddim_50" in job
    compare = run([bin_dir / "lsde-compare", "seeds.count=64", "batch_size=64", "samplers.em_1000.steps=20",
                   "samplers.pc_1000.steps=10", "progress=false"], elsewhere)
    assert "exact (noise floor)" in compare and "ode_dopri5" in compare
    assert list((elsewhere / "outputs" / "compare").glob("*/results.jsonl"))
    assert "lsde-bench" in run([bin_dir / "lsde-bench", "--help"], elsewhere)
    sampled = run([bin_dir / "lsde-sample", "sampler=ddim", "nfe=5", "seeds.count=64", "progress=false"], elsewhere)
    assert "64 samples of the exact eight_gaussians with ddim at NFE 5" in sampled
    assert (elsewhere / "outputs" / "samples" / "default" / "samples.npz").is_file()
    for app in ("lsde-likelihood", "lsde-sample", "lsde-figures", "lsde-prepare"):
        run([bin_dir / app, "--help"], elsewhere)
