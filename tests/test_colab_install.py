"""Colab's install path: a fresh virtual environment, the package installed from the repository
folder with the version ranges of ``pyproject.toml``, and the tour run in it at smoke size.

On Colab the set-up cell runs ``pip install "circuit-casebook @ git+<repository>"`` in an
environment that already has torch. Here: a new venv without system site-packages; torch
first, the version this environment has (Colab's "own" torch; pip takes it from its cache or
the machine's local wheels, no download); then the package from a copy of the repository's
tracked files, not editable (so a module or data file missing from the package shows), with
every other dependency resolved from its range; torch must stay as it was. Then the tour runs
with papermill on that venv's kernel, offline, on the stand-in. This catches a range that no
longer resolves and a file missing from the package before a learner does.

It needs PyPI (or pip's cache) and takes a few minutes: ``CASEBOOK_SKIP_COLAB_INSTALL=1``
skips it on a developer's machine (never under CI).
"""

import json
import os
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
    _run(pip + [f"torch=={torch.__version__}"], timings, "torch (Colab's own)", env=env, cwd=tmp_path)
    # With what Colab has besides (a Jupyter kernel) and papermill, which runs the notebook as
    # the book build does; one resolution for all.
    _run(pip + [str(source), "ipykernel", "papermill"], timings, "package with pyproject ranges",
         env=env, cwd=tmp_path)
    _run([python, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"], timings, "kernelspec",
         env=env, cwd=tmp_path)

    probe = _run([python, "-c", "import json, torch, helpers, helpers.models as m; print(json.dumps("
                  "[torch.__version__, helpers.__file__, str(m.__file__)]))"],
                 timings, "import", env=env, cwd=tmp_path)
    venv_torch, helpers_file, _ = json.loads(probe.stdout.strip().splitlines()[-1])
    assert venv_torch == torch.__version__, "installing the package replaced torch (Colab's own)"
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
