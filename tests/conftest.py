"""Shared fixtures. Every test runs offline: no hub, and an empty Hugging Face cache."""

import os
import sys
import tempfile
from pathlib import Path

# Before transformers / huggingface_hub are imported anywhere: they read these at import.
_EMPTY_HF_HOME = tempfile.mkdtemp(prefix="casebook-empty-hf-")
os.environ["HF_HOME"] = _EMPTY_HF_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_EMPTY_HF_HOME, "hub")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers.models import ModelSpec, build_stand_in, finish_model, load_model  # noqa: E402

TINY = ModelSpec("tiny-gpt2", "openai-community/gpt2", n_layers=2, n_heads=4, d_model=64)


#: Where the smoke book's timings are copied for `.ci/run` to print against the budgets.
SMOKE_TIMINGS = ROOT / "_build" / "test-smoke-timings.json"
_SMOKE_BUILT: list = []  # set once this session has built the smoke book


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    """The book, built once per session: every chapter at smoke size, asked for pretrained
    weights offline (so it falls back to the stand-in), under the device harness
    (``CASEBOOK_DEVICE_HARNESS=1``: the CPU pretends to be a GPU, so a chapter that would
    crash on Colab's GPU fails here). Returns (output folder, build stdout)."""
    import shutil
    import subprocess

    out = tmp_path_factory.mktemp("book")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_book.py"), "--weights", "pretrained", "--smoke",
         "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, CASEBOOK_DEVICE_HARNESS="1"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    SMOKE_TIMINGS.parent.mkdir(exist_ok=True)
    shutil.copy(out / "timings.json", SMOKE_TIMINGS)
    _SMOKE_BUILT.append(out)
    return out, result.stdout


@pytest.fixture(scope="session")
def empty_hf_home() -> Path:
    return Path(_EMPTY_HF_HOME)


@pytest.fixture(scope="session")
def small_stand_in():
    """GPT-2 small's architecture with seed-0 random weights (shared: treat as read-only)."""
    return load_model("gpt2-small", weights="random", seed=0, device="cpu")


@pytest.fixture(scope="session")
def tiny_model():
    """A 2-layer, 4-head, d_model-64 GPT-2 with random weights, for quick science checks."""
    return finish_model(build_stand_in(TINY, seed=1), TINY, stand_in=True, seed=1)


@pytest.fixture
def torch_seeded():
    torch.manual_seed(1234)


def pytest_terminal_summary(terminalreporter):
    """After a run that built the smoke book: each chapter's time against its target,
    reported, not asserted (``scripts/bench_notebooks.py --report``)."""
    import json

    if not _SMOKE_BUILT:
        return
    data = json.loads(SMOKE_TIMINGS.read_text())
    terminalreporter.section("chapter runtimes at smoke size vs their targets (not asserted)")
    import nbformat

    for stem, timing in data["notebooks"].items():
        path = ROOT / "notebooks" / f"{stem}.ipynb"
        target = nbformat.read(path, as_version=4).metadata.get("casebook", {}).get("runtime_budget_seconds", 60)
        verdict = "MET" if timing["seconds"] <= target else "NOT MET"
        terminalreporter.write_line(f"{stem:<22}{timing['seconds']:>8.1f} s  target {target:>4} s  {verdict}")
