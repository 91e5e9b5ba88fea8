"""The notebook contract, checked on the stored notebooks (fast, no execution)."""

import ast
import json
from pathlib import Path

import pytest
import yaml

from helpers.project import REPOSITORY_URL, setup_cell_source

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REQUIRED_PARAMETERS = {"model_name", "weights", "seed", "device"}


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_there_are_notebooks_and_the_toc_lists_them_all():
    toc = (ROOT / "_toc.yml").read_text()
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        assert f"notebooks/{path.stem}" in toc, f"{path.name} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs_and_with_python3_kernel(path):
    nb = _load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:1]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_is_the_shared_hidden_setup(path):
    first = _load(path)["cells"][0]
    assert first["cell_type"] == "code" and "remove-cell" in first["metadata"].get("tags", [])
    assert "".join(first["source"]) == setup_cell_source(), "run scripts/sync_setup_cells.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_second_cell_holds_literal_parameters(path):
    nb = _load(path)
    second = nb["cells"][1]
    assert second["cell_type"] == "code" and "parameters" in second["metadata"].get("tags", [])
    names = set()
    for node in ast.parse("".join(second["source"])).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
        ast.literal_eval(node.value)  # raises on anything but a literal
        names.add(node.targets[0].id)
    assert REQUIRED_PARAMETERS <= names
    smoke = nb["metadata"]["casebook"]["smoke_parameters"]
    assert set(smoke) <= names, "smoke parameters must be parameters of the notebook"
    only_one_parameters_cell = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(only_one_parameters_cell) == 1


def test_repository_url_is_defined_once_and_agrees_everywhere():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"]["url"] == REPOSITORY_URL
    assert REPOSITORY_URL in (ROOT / "pyproject.toml").read_text()
    assert config["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")


def test_book_config_keeps_one_executor_and_jupyter_book_1():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"  # papermill executes, once
    assert config["only_build_toc_files"] is True
    pins = (ROOT / "requirements.txt").read_text()
    assert "jupyter-book==1." in pins
