"""The execution cache of the book build, on a cheap throw-away project (two one-cell notebooks).

The build script runs for real (papermill, a Python kernel) with ``--no-render``; only its
``ROOT`` points at a temporary project, so each execution costs a kernel start, not a chapter.
"""

import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import exec_cache  # noqa: E402


def _build_module():
    spec = importlib.util.spec_from_file_location("build_book_for_cache_tests", ROOT / "scripts" / "build_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _notebook(text: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('weights = "pretrained"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(f"print({text!r}, weights)"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture
def project(tmp_path):
    """A minimal book: two notebooks in _toc.yml, a helpers package, pins."""
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (root / "book").mkdir()
    (root / "book" / "intro.md").write_text("# Intro\n")
    (root / "src" / "helpers").mkdir(parents=True)
    (root / "src" / "helpers" / "__init__.py").write_text("VALUE = 1\n")
    (root / "requirements.txt").write_text("papermill\n")
    (root / "_config.yml").write_text("title: test\n")
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/a\n  - file: notebooks/b\n")
    for name in "ab":
        nbformat.write(_notebook(f"chapter {name}"), root / "notebooks" / f"{name}.ipynb")
    return root


@pytest.fixture
def build(project, tmp_path, monkeypatch, capsys):
    """Run the build on the project; return which chapters were executed and which reused."""
    monkeypatch.setenv("CASEBOOK_BUILD", "1")  # main() sets these; monkeypatch restores them
    monkeypatch.setenv("TQDM_DISABLE", "1")
    module = _build_module()
    monkeypatch.setattr(module, "ROOT", project)
    out = tmp_path / "out"

    def run(*extra, weights="random"):
        capsys.readouterr()
        assert module.main(["--weights", weights, "--no-render", "--out", str(out), *extra]) == 0
        log = capsys.readouterr().out
        timings = json.loads((out / "timings.json").read_text())["notebooks"]
        executed = sorted(name for name, t in timings.items() if not t["cached"])
        reused = sorted(name for name, t in timings.items() if t["cached"])
        return executed, reused, log

    run.out = out
    return run


def test_second_build_executes_nothing_and_an_edited_notebook_runs_alone(build, project):
    assert build()[:2] == (["a", "b"], [])
    executed, reused, log = build()
    assert (executed, reused) == ([], ["a", "b"])
    assert "executed: none; reused from the cache: a, b" in log
    # The reused notebooks are the executed ones, outputs and all.
    staged = nbformat.read(build.out / "stage" / "notebooks" / "a.ipynb", as_version=4)
    assert "chapter a random" in staged.cells[-1].outputs[0]["text"]

    nb = nbformat.read(project / "notebooks" / "b.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("An edit to the prose."))
    nbformat.write(nb, project / "notebooks" / "b.ipynb")
    assert build()[:2] == (["b"], ["a"])

    executed, reused, log = build("--force")
    assert (executed, reused) == (["a", "b"], []) and "FORCE" in log


def test_a_helpers_change_re_executes_every_chapter(build, project):
    build()
    (project / "src" / "helpers" / "__init__.py").write_text("VALUE = 2\n")
    assert build()[:2] == (["a", "b"], [])


def test_stand_in_and_real_weights_outputs_never_mix(build, project, tmp_path):
    build()
    cache = exec_cache.ExecutionCache(build.out / "cache", "pretrained")
    digest = exec_cache.shared_digest(project)
    path = project / "notebooks" / "a.ipynb"
    random_key = exec_cache.chapter_key(path, {"weights": "random"}, "random", project, digest)
    real_key = exec_cache.chapter_key(path, {"weights": "pretrained"}, "pretrained", project, digest)
    assert random_key != real_key
    # The real-weights cache has nothing, whatever key is asked for ...
    assert cache.lookup("a", random_key) is None and cache.lookup("a", real_key) is None
    # ... a stand-in execution cannot be stored in it ...
    staged = build.out / "stage" / "notebooks" / "a.ipynb"
    with pytest.raises(ValueError):
        cache.store("a", real_key, staged, parameters={"weights": "random"}, seconds=1.0, executed_at="now")
    # ... and a stand-in notebook smuggled under a real-weights name is refused (papermill's record).
    cache.folder.mkdir(parents=True)
    target = cache.folder / f"a-{real_key[:24]}"
    target.with_suffix(".ipynb").write_bytes(staged.read_bytes())
    target.with_suffix(".json").write_text(json.dumps({"key": real_key, "weights": "pretrained"}))
    assert cache.lookup("a", real_key) is None
    assert not cache.restore("a", real_key, tmp_path / "restored.ipynb")
    assert not (tmp_path / "restored.ipynb").exists()


def test_key_covers_parameters_weights_notebook_helpers_and_pins(project):
    path = project / "notebooks" / "a.ipynb"

    def key(parameters=None, weights="random"):
        return exec_cache.chapter_key(path, parameters or {"weights": weights}, weights, project)

    base = key()
    assert key() == base  # deterministic
    assert key({"weights": "random", "n_prompts": 4}) != base
    assert key(weights="pretrained") != base
    (project / "requirements.txt").write_text("papermill==2.6.0\n")
    pinned = key()
    assert pinned != base
    (project / "src" / "helpers" / "new_module.py").write_text("")
    assert key() != pinned
    bytecode = project / "src" / "helpers" / "__pycache__"
    bytecode.mkdir()
    with_module = key()
    (bytecode / "x.cpython-311.pyc").write_bytes(b"\0")
    assert key() == with_module  # bytecode is not source
    path.write_text(path.read_text().replace("chapter a", "chapter A"))
    assert key() != with_module


def test_cache_keeps_a_few_entries_per_chapter(tmp_path):
    executed = tmp_path / "x.ipynb"
    nb = _notebook("x")
    nb.metadata["papermill"] = {"parameters": {"weights": "random"}}
    nbformat.write(nb, executed)
    cache = exec_cache.ExecutionCache(tmp_path / "cache", "random")
    keys = [f"{i:02x}" + "0" * 62 for i in range(exec_cache.KEEP_PER_CHAPTER + 2)]
    for key in keys:
        cache.store("x", key, executed, parameters={"weights": "random"}, seconds=1.0, executed_at="now")
    assert len(list(cache.folder.glob("x-*.ipynb"))) == exec_cache.KEEP_PER_CHAPTER
    assert cache.lookup("x", keys[-1]) is not None
