"""The book's home is ONE setting (pyproject.toml's [project.urls] Repository); every copy is
generated from it and agrees; the Colab set-up cell installs the release tag with %pip."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
import yaml

from helpers import project

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _tracked_text_files():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    names = [n for n in listed.stdout.decode().split("\0") if n] if listed.returncode == 0 else []
    for name in names:
        if name.endswith((".py", ".md", ".yml", ".yaml", ".toml", ".ipynb", ".txt", ".cfg")) and (ROOT / name).is_file():
            yield name, (ROOT / name).read_text(encoding="utf-8", errors="replace")


def test_the_home_is_read_from_pyproject():
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project.REPOSITORY_URL == data["project"]["urls"]["Repository"].rstrip("/")
    assert project.VERSION == data["project"]["version"] and project.RELEASE_TAG == f"v{project.VERSION}"
    assert project.COLAB_INSTALL_SPEC.endswith(f"@{project.RELEASE_TAG}")


def test_every_copy_agrees_with_the_setting():
    """_config.yml's launch-button section, README's badge, every notebook's set-up cell and
    student-notebook line: `python scripts/sync_setup_cells.py` writes them all."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"] == project.book_repository_config()
    assert project.readme_badge() in (ROOT / "README.md").read_text()
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_setup_cells.py"), "--check"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_file_names_another_home():
    """Colab links and git installs of this book in tracked files all point at the setting."""
    home = project.github_path().lower()
    for name, text in _tracked_text_files():
        for found in re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/", text):
            assert found.lower() == home, f"{name} opens {found} in Colab, not {home}"
        for found in re.findall(r"circuit-casebook @ git\+https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?@", text):
            assert found.lower() == home, f"{name} installs from {found}, not {home}"


def test_the_setup_cell_installs_the_release_with_pip_magic():
    source = project.setup_cell_source()
    assert "%pip install" in source and "subprocess" not in source and "--quiet" not in source
    assert f"@{project.RELEASE_TAG}" in source and "@main" not in source
    assert project.REPOSITORY_URL in source
    assert all(len(line) <= 80 for line in source.splitlines())


def test_a_fork_rehomes_the_book_in_one_edit(tmp_path):
    """Copy pyproject.toml with another Repository line: every generated copy follows."""
    fork = "https://github.com/someone-else/their-casebook"
    (tmp_path / "src" / "helpers").mkdir(parents=True)
    text = (ROOT / "pyproject.toml").read_text()
    edited = re.sub(r'^Repository = ".*"$', f'Repository = "{fork}"', text, count=1, flags=re.M)
    assert edited != text
    (tmp_path / "pyproject.toml").write_text(edited)
    shutil.copy(ROOT / "src" / "helpers" / "project.py", tmp_path / "src" / "helpers" / "project.py")
    spec = importlib.util.spec_from_file_location("fork_project", tmp_path / "src" / "helpers" / "project.py")
    fork_project = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fork_project)
    generated = [fork_project.setup_cell_source(), fork_project.readme_badge(),
                 fork_project.student_notebook_links("01_ioi"), json.dumps(fork_project.book_repository_config()),
                 fork_project.colab_url("notebooks/00_tour.ipynb")]
    for text in generated:
        assert "someone-else/their-casebook" in text and "circuit-casebook/circuit-casebook" not in text, text


def test_an_installed_package_reads_the_home_from_its_metadata(tmp_path):
    """On Colab there is no pyproject.toml: the package's metadata (written by pip from it)."""
    (tmp_path / "helpers").mkdir()
    shutil.copy(ROOT / "src" / "helpers" / "project.py", tmp_path / "helpers" / "project.py")
    spec = importlib.util.spec_from_file_location("installed_project", tmp_path / "helpers" / "project.py")
    installed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installed)
    assert (installed.REPOSITORY_URL, installed.VERSION) == (project.REPOSITORY_URL, project.VERSION)


def _run_setup_cell_as_on_colab(tmp_path, installed_after: str | None, pip_says: str, replaces: str = ""):
    """The set-up cell in an IPython shell that believes it is Colab; %pip is a stand-in that
    prints ``pip_says`` and leaves ``circuit-casebook`` at ``installed_after``."""
    script = textwrap.dedent(f'''
        import sys, types
        import numpy
        from importlib import metadata
        from IPython.core.interactiveshell import InteractiveShell
        sys.modules["google.colab"] = types.ModuleType("google.colab")
        state = {{"version": None, "pip": [], "replaced": False}}
        real_version = metadata.version
        def version(name):
            if name == "circuit-casebook":
                if state["version"] is None:
                    raise metadata.PackageNotFoundError(name)
                return state["version"]
            if name == {replaces!r} and state["replaced"]:
                return "0.0.0-replaced"
            return real_version(name)
        metadata.version = version
        shell = InteractiveShell.instance()
        def pip(line):
            state["pip"].append(line)
            print({pip_says!r})
            state["version"] = {installed_after!r}
            state["replaced"] = True
        shell.register_magic_function(pip, "line", "pip")
        cell = {project.setup_cell_source()!r}
        result = shell.run_cell(cell)
        print("PIP-CALLS", state["pip"])
        print("ERROR", type(result.error_in_exec).__name__, result.error_in_exec)
    ''')
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)


def test_the_setup_cell_shows_pips_error_and_stops(tmp_path):
    out = _run_setup_cell_as_on_colab(tmp_path, None, "ERROR: Could not find a version (fake pip)")
    assert "ERROR: Could not find a version (fake pip)" in out.stdout, out.stdout + out.stderr
    assert f"circuit-casebook @ git+{project.REPOSITORY_URL}@{project.RELEASE_TAG}" in out.stdout
    assert "ERROR RuntimeError" in out.stdout and "pip's message is just" in out.stdout


def test_the_setup_cell_installs_once_without_a_restart_when_nothing_was_replaced(tmp_path):
    out = _run_setup_cell_as_on_colab(tmp_path, project.VERSION, "Successfully installed (fake pip)")
    assert "PIP-CALLS ['install" in out.stdout and "ERROR NoneType" in out.stdout, out.stdout + out.stderr
    assert "restarting" not in out.stdout


def test_the_setup_cell_restarts_only_when_pip_replaced_an_imported_package(tmp_path):
    out = _run_setup_cell_as_on_colab(tmp_path, project.VERSION, "Successfully installed (fake pip)",
                                      replaces="numpy")
    assert out.returncode == -9, out.stdout + out.stderr  # the kernel ends: Colab restarts it
    assert "restarting the session once" in out.stdout
