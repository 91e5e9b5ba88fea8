"""Colab's install path: the package installed OVER Colab's preinstalled packages, as the
set-up cell's ``%pip install`` does, and the tour run at smoke size in that environment.

``tests/colab-preinstalled.txt`` lists what Colab's GPU runtime has installed (dated, with
its source). The install test makes a fresh virtual environment, installs that list first
(this machine's torch instead of Colab's CUDA build, plus papermill to run the notebook),
then the package from a copy of the repository's tracked files, not editable (so a module or
data file missing from the package shows), letting pip resolve the ranges of
``pyproject.toml`` against what is there. It fails if the install replaces torch or a
package Colab's own kernel runs on (IPython, ipykernel, jupyter_client, tornado, traitlets,
pyzmq), prints every other package it replaced (on Colab the set-up cell restarts the session
if one of those was already imported), then runs the tour with papermill on that
environment's kernel, offline, on the stand-in.

It needs the package index (or pip's cache) and takes a few minutes:
``CASEBOOK_SKIP_COLAB_INSTALL=1`` skips it on a developer's machine (never under CI). The
static checks of the list run always.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "notebooks" / "00_tour.ipynb"


def _tracked_copy(target: Path) -> None:
    """The repository as a clone would have it (tracked files only)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        files = [f for f in listed.stdout.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
    if not files:  # not a git checkout: everything but build artefacts
        shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(
            ".git", ".venv", "_build", "__pycache__", "*.egg-info", "build", ".pytest_cache"))
        return
    for name in files:
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _run(command, timings: dict, step: str, **kwargs) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    timings[step] = round(time.perf_counter() - start, 1)
    assert result.returncode == 0, f"{step} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


COLAB_LIST = ROOT / "tests" / "colab-preinstalled.txt"
#: What Colab's kernel itself runs on: the book's install must never replace these.
KERNEL_PACKAGES = ("ipython", "ipykernel", "jupyter-client", "tornado", "traitlets", "pyzmq")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def colab_preinstalled() -> dict[str, str]:
    """``{distribution: version}`` from tests/colab-preinstalled.txt."""
    pins = {}
    for line in COLAB_LIST.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_norm(name)] = version.strip()
    return pins


def _requirements():
    import tomllib

    from packaging.requirements import Requirement

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {_norm(Requirement(r).name): Requirement(r) for r in data["project"]["dependencies"]}


def test_the_colab_list_is_dated_and_names_what_the_book_needs():
    text = COLAB_LIST.read_text()
    assert re.search(r"^# date: \d{4}-\d{2}-\d{2}$", text, flags=re.M) and "# source:" in text
    pins = colab_preinstalled()
    assert {"torch", "transformers", "numpy", "pandas"} <= set(pins)
    assert set(KERNEL_PACKAGES) <= set(pins)


def test_colabs_torch_and_kernel_satisfy_the_package_ranges():
    """pip keeps what satisfies a range: Colab's torch and its kernel's IPython must."""
    pins, requirements = colab_preinstalled(), _requirements()
    for name in ("torch", *KERNEL_PACKAGES):
        if name in requirements:
            assert requirements[name].specifier.contains(pins[name], prereleases=True), (
                f"pyproject.toml's {requirements[name]} would replace Colab's {name} {pins[name]}")


def _freeze(python: str, env: dict, cwd) -> dict[str, str]:
    out = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                         env=env, cwd=cwd, check=True).stdout
    return {_norm(p["name"]): p["version"] for p in json.loads(out)}


@pytest.mark.colab_install
def test_colab_install_path_runs_the_tour(tmp_path):
    if os.environ.get("CASEBOOK_SKIP_COLAB_INSTALL") and os.environ.get("CI", "").lower() not in ("true", "1"):
        pytest.skip("CASEBOOK_SKIP_COLAB_INSTALL is set")
    import torch

    timings: dict = {}
    source, venv = tmp_path / "repository", tmp_path / "venv"
    _tracked_copy(source)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PIP_DISABLE_PIP_VERSION_CHECK="1",
               JUPYTER_PATH=str(venv / "share" / "jupyter"), JUPYTER_DATA_DIR=str(tmp_path / "jupyter"),
               HF_HUB_OFFLINE="1", TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet"]

    _run([sys.executable, "-m", "venv", str(venv)], timings, "venv", env=env)
    local_torch = torch.__version__.split("+")[0]
    colab = [f"{name}=={version}" for name, version in colab_preinstalled().items() if name != "torch"]
    # Colab's preinstalled packages (this machine's torch for Colab's CUDA one), and papermill,
    # which runs the notebook as the book build does.
    _run(pip + [f"torch=={local_torch}", *colab, "papermill"], timings, "Colab's preinstalled packages",
         env=env, cwd=tmp_path)
    before = _freeze(python, env, tmp_path)
    # What the set-up cell's %pip does, from the repository folder instead of the release tag.
    _run(pip + [str(source)], timings, "the book's package over them", env=env, cwd=tmp_path)
    after = _freeze(python, env, tmp_path)
    replaced = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
    print("installing the book replaced:", json.dumps(replaced) if replaced else "nothing")
    assert "torch" not in replaced, "installing the package replaced torch (Colab's own)"
    kernel = {n: replaced[n] for n in KERNEL_PACKAGES if n in replaced}
    assert not kernel, f"installing the package replaced what Colab's kernel runs on: {kernel}"
    _run([python, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"], timings, "kernelspec",
         env=env, cwd=tmp_path)

    probe = _run([python, "-c", "import json, torch, helpers, helpers.models as m; print(json.dumps("
                  "[torch.__version__, helpers.__file__, str(m.__file__)]))"],
                 timings, "import", env=env, cwd=tmp_path)
    venv_torch, helpers_file, _ = json.loads(probe.stdout.strip().splitlines()[-1])
    assert venv_torch.split("+")[0] == local_torch
    assert Path(helpers_file).resolve().is_relative_to(venv.resolve()), helpers_file  # not the repo's src/

    nb = nbformat.read(TOUR, as_version=4)
    parameters = {"weights": "random", **nb.metadata.get("casebook", {}).get("smoke_parameters", {})}
    executed = tmp_path / "tour.ipynb"
    _run([python, "-m", "papermill", str(source / "notebooks" / TOUR.name), str(executed),
          "-k", "python3", "-y", json.dumps(parameters), "--cwd", str(tmp_path), "--no-progress-bar"],
         timings, "tour at smoke size", env=env, cwd=tmp_path)
    out = nbformat.read(executed, as_version=4)
    errors = [o for c in out.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert not errors, errors
    print("colab install path, seconds per step:", json.dumps(timings))
    (tmp_path / "timings.json").write_text(json.dumps(timings, indent=2))
