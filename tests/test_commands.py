"""The installed commands ([project.scripts]): each starts, and `--help` lists its own flags;
`python launch.py` and `imgcls-train` are one command."""

import shutil
import subprocess
import sys
import tomllib

import pytest
from conftest import REPO_ROOT

with open(f"{REPO_ROOT}/pyproject.toml", "rb") as f:
    SCRIPTS = tomllib.load(f)["project"]["scripts"]

# A few flags each command's --help must show.
FLAGS = {
    "imgcls-train": ("--config", "--workdir", "--fit_check", "--k8s"),
    "imgcls-predict": ("--checkpoint", "--top", "--output"),
    "imgcls-convert": ("--arch", "--source", "--out"),
    "imgcls-export": ("--checkpoint", "--format", "--platforms"),
    "imgcls-fit-check": ("--config", "--topology", "--num_slices"),
    "imgcls-evaluate": ("--workdir", "--suites", "--corruptions", "--extra_splits"),
}


def _help(name: str) -> str:
    """`NAME --help` as the installed wrapper runs it (its entry point, argv[0] its name)."""
    module, function = SCRIPTS[name].split(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {function}; {function}()"
    run = subprocess.run([sys.executable, "-c", code, "--help"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 1 and not run.stderr, run.stderr[-2000:]  # absl's --help exits 1.
    return run.stdout


def test_every_command_is_checked_here():
    assert set(SCRIPTS) == set(FLAGS)


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_help_shows_the_commands_flags(name):
    text = _help(name)
    for flag in FLAGS[name]:
        assert f"{flag.lstrip('-')}:" in text, (name, flag)  # Booleans: --[no]NAME.
    installed = shutil.which(name)
    if installed:  # After `pip install -e .`: the real wrapper says the same.
        run = subprocess.run([installed, "--help"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert all(f"{flag.lstrip('-')}:" in run.stdout for flag in FLAGS[name])


def test_launch_py_is_the_train_command():
    run = subprocess.run([sys.executable, "launch.py", "--help"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    flags = {line.split(":")[0].strip() for line in run.stdout.splitlines() if "  --" in line}
    train = {line.split(":")[0].strip() for line in _help("imgcls-train").splitlines()
             if "  --" in line}  # fmt: skip
    assert flags == train and "--workdir" in flags
