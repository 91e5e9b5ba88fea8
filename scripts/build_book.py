"""Build the book: execute every chapter with papermill, then render with Jupyter Book 1.x.

Usage (``make book`` calls this):
    python scripts/build_book.py [--weights pretrained|random] [--smoke] [--out DIR]
                                 [--only NAME ...] [--no-render] [--force]

1. Weights: ``pretrained`` by default (env ``MODEL_WEIGHTS`` or ``--weights``). If GPT-2 is
   neither cached nor downloadable, say so once and build every chapter with the stand-in
   (``weights="random"``); the site then carries a banner on every page.
2. Each notebook in ``_toc.yml`` is executed by papermill into ``DIR/stage/notebooks/``
   (build artefacts; the stored notebooks stay without outputs). papermill's injected
   parameters cell is tagged ``remove-cell`` so it never shows in the book. A failing notebook
   stops the build with its traceback and a non-zero exit; the notebook executed up to the
   failing cell and the traceback are kept in ``DIR/reports/``. A chapter whose notebook,
   parameters, weights, ``helpers`` source and pins are unchanged since a previous build is
   restored from the execution cache instead (``scripts/exec_cache.py``; ``--force`` re-runs all).
   The scorecards of the executed notebooks become ``DIR/scorecards/*.json`` and the book's
   reproduction-status page (``scripts/status_page.py``).
3. Jupyter Book renders the staged copy into ``DIR/html``. A plotly figure Jupyter Book cannot
   render (``mystnb.unknown_mime_type``) fails the build too: a vanished figure is a broken page.
   The site loads nothing from outside: ``scripts/book_assets.py`` ships plotly.js, circuitsvis
   and MathJax in its static files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import exec_cache  # noqa: E402  (same directory: the execution cache)
import status_page  # noqa: E402  (same directory: the reproduction-status page)
import book_assets  # noqa: E402  (scripts/book_assets.py: the site's offline assets)
STAND_IN_ANNOUNCEMENT = (
    "⚠ This build used the stand-in model: GPT-2's architecture and tokenizer with RANDOM "
    "weights (the model hub was unreachable). Figures show the pipeline, not GPT-2's "
    "behaviour. Run a chapter on Colab for the real results."
)


def log(message: str) -> None:
    print(f"[build] {message}", flush=True)


def shown(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def toc_notebooks() -> list[Path]:
    """The notebooks the table of contents lists, in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    paths = [ROOT / f"{f}.ipynb" for f in files if f.startswith("notebooks/")]
    return [p for p in paths if p.exists()]


def load_helper_module(name: str):
    """``src/helpers/<name>.py`` on its own, not through the package: this process only
    drives the kernels and does not import torch (``hub.py`` and ``project.py`` allow it)."""
    import importlib.util

    path = ROOT / "src" / "helpers" / f"{name}.py"
    if not path.exists():  # a project folder without the package: this script's repository's
        path = Path(__file__).resolve().parents[1] / "src" / "helpers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"casebook_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass looks its module up while being built
    spec.loader.exec_module(module)
    return module


def device_harness_requested() -> bool:
    """``CASEBOOK_DEVICE_HARNESS`` set (the kernels inherit it: ``helpers.devices``)."""
    return os.environ.get("CASEBOOK_DEVICE_HARNESS", "").strip().lower() in {"1", "true", "yes", "on", "cuda", "mps"}


def accelerator_note() -> str:
    """What the kernels will run on, without importing torch here."""
    if device_harness_requested():
        return "the CPU under the device harness (a pretend GPU: CASEBOOK_DEVICE_HARNESS)"
    if shutil.which("nvidia-smi"):
        return "the GPU"
    if sys.platform == "darwin":
        return "Apple silicon's GPU (MPS) if present, else the CPU"
    return "the CPU (no GPU found)"


def announce_plan(notebooks: list[Path], weights: str, smoke: bool, cache_dir: Path, render: bool = True,
                  html: Path | None = None) -> None:
    """The build's first lines: what it will do and about how long it takes."""
    key = "runtime_budget_seconds" if smoke else "full_runtime_budget_seconds"
    default = 60 if smoke else 600
    budgets = []
    for path in notebooks:
        meta = nbformat.read(path, as_version=4).metadata.get("casebook", {})
        budgets.append(meta.get(key, default))
    total = sum(budgets)
    size = "smoke size (small, quick)" if smoke else "default size"
    model = ("the stand-in (GPT-2's architecture, random weights: figures show the pipeline, "
             "not GPT-2)" if weights == "random" else "GPT-2's real weights")
    chapters = f"{len(notebooks)} chapter{'s' if len(notebooks) != 1 else ''}"
    then = f", then render the site into {shown(html or ROOT / '_build' / 'html')}" if render else ""
    log(f"plan: execute {chapters} at {size} with {model}, on {accelerator_note()}{then}")
    log(f"time: about {max(1, round(total / 60))} min on 2 CPU cores for the chapters (targets: "
        + ", ".join(f"{p.stem} {b // 60 if b >= 120 else b}{' min' if b >= 120 else ' s'}"
                    for p, b in zip(notebooks, budgets))
        + f"){' plus about 1 min to render' if render else ''}; a GPU is faster. Chapters unchanged since the last build "
          f"are reused from {shown(cache_dir)} (FORCE=1 re-runs them).")


def notebook_parameters(path: Path) -> dict:
    """The literal assignments of the notebook's ``parameters`` cell."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            scope: dict = {}
            exec(cell.source, {}, scope)  # literals only, by the notebook contract
            return scope
    raise SystemExit(f"{shown(path)} has no cell tagged 'parameters'.")


def choose_weights(requested: str, notebooks: list[Path]) -> str:
    if requested == "random":
        log("weights: random (the stand-in), as requested")
        return "random"
    # helpers/hub.py is loaded on its own, not through the package, so that this process (which
    # only drives the kernels) does not import torch and transformers just to ask the hub.
    hub_available = load_helper_module("hub").hub_available

    models = sorted({notebook_parameters(p).get("model_name", "gpt2-small") for p in notebooks})
    missing = [m for m in models if not hub_available(m)]
    if missing:
        log(
            f"the Hugging Face hub is unreachable and {', '.join(missing)} is not cached: "
            "building every chapter with the STAND-IN (random weights). Every page will say so."
        )
        return "random"
    log(f"weights: pretrained ({', '.join(models)})")
    return "pretrained"


def execute(path: Path, out: Path, parameters: dict, timeout: int, reports: Path | None = None) -> float:
    """Run one notebook with papermill; hide the injected cell; return seconds taken.

    On failure the notebook executed up to the failing cell and the traceback are copied to
    ``reports`` (default: beside ``out``), the build says where, and exits with status 1.
    """
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(path), str(out), parameters=parameters, kernel_name="python3",
            execution_timeout=timeout, cwd=str(out.parent), progress_bar=False,
            log_output=False, report_mode=False,
        )
    except pm.PapermillExecutionError as exc:
        log(f"FAILED: {shown(path)} (cell {exc.exec_count}): {exc.ename}: {exc.evalue}")
        print("\n".join(exc.traceback), file=sys.stderr)
        failure_report(path, out, "\n".join(exc.traceback), reports or out.parent / "reports")
        raise SystemExit(1) from None
    except (CellTimeoutError, DeadKernelError) as exc:
        log(f"FAILED: {shown(path)}: {type(exc).__name__}: {exc}")
        failure_report(path, out, traceback.format_exc(), reports or out.parent / "reports")
        raise SystemExit(1) from None
    nb = nbformat.read(out, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(nb, out)
    return time.perf_counter() - start


def failure_report(path: Path, executed: Path, trace: str, reports: Path) -> None:
    """Keep a failed chapter's partly executed notebook and its traceback in ``reports``."""
    reports.mkdir(parents=True, exist_ok=True)
    notebook = reports / path.name
    if executed.exists():
        shutil.copy(executed, notebook)
    text = reports / f"{path.stem}.traceback.txt"
    text.write_text(re.sub(r"\x1b\[[0-9;]*m", "", trace) + "\n", encoding="utf-8")
    where = f"{shown(notebook)} (executed up to the failing cell) and " if executed.exists() else ""
    log(f"failure report: {where}{shown(text)}")


def stage_sources(stage: Path, stand_in: bool) -> None:
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "notebooks").mkdir(parents=True)
    shutil.copytree(ROOT / "book", stage / "book")
    shutil.copy(ROOT / "_toc.yml", stage / "_toc.yml")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    # Launch buttons and the repository button: from the book's one home setting.
    config["repository"] = load_helper_module("project").book_repository_config()
    if stand_in:
        config.setdefault("html", {})["announcement"] = STAND_IN_ANNOUNCEMENT
    book_assets.configure(config)  # plotly.js, circuitsvis, MathJax from the site itself
    (stage / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def render(stage: Path, out: Path) -> None:
    html = out / "html"
    if html.exists():
        shutil.rmtree(html)
    build_log = out / "jupyter-book.log"
    jb = Path(sys.executable).with_name("jupyter-book")
    command = [str(jb if jb.exists() else "jupyter-book"), "build", str(stage), "--path-output", str(out / "jb")]
    log("rendering with Jupyter Book")
    result = subprocess.run(command, capture_output=True, text=True)
    build_log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        print(result.stdout[-4000:] + result.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"[build] Jupyter Book failed (exit {result.returncode}); full log: {build_log}")
    unknown = re.findall(r".*unknown_mime_type.*", result.stdout + result.stderr)
    if unknown:
        print("\n".join(unknown[:5]), file=sys.stderr)
        raise SystemExit(f"[build] outputs Jupyter Book cannot render (figures would vanish); log: {build_log}")
    shutil.move(str(out / "jb" / "_build" / "html"), str(html))
    shutil.rmtree(out / "jb", ignore_errors=True)
    log(f"book written to {shown(html)}/index.html")


def write_exercises(notebooks: list[Path], folder: Path) -> None:
    """The student notebooks (solutions removed), generated from the chapters, into the site."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from student_notebooks import write_student_notebooks

    written = write_student_notebooks(notebooks, folder)
    log(f"student notebooks: {', '.join(p.name for p in written) or 'none'} in {shown(folder)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", choices=["pretrained", "random"],
                        default=os.environ.get("MODEL_WEIGHTS") or "pretrained")
    parser.add_argument("--smoke", action="store_true",
                        help="use each notebook's smoke-size parameters (tests, quick checks)")
    parser.add_argument("--out", type=Path, default=ROOT / "_build")
    parser.add_argument("--only", nargs="*", help="notebook names (e.g. 00_tour) to execute")
    parser.add_argument("--no-render", action="store_true", help="execute only")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--force", action="store_true",
                        help="re-execute every chapter, ignoring the execution cache (make book FORCE=1)")
    parser.add_argument("--cache", type=Path, help="execution cache folder (default: OUT/cache)")
    args = parser.parse_args(argv)
    if args.weights not in ("pretrained", "random"):
        parser.error(f"--weights must be 'pretrained' or 'random', not {args.weights!r}")

    os.environ["CASEBOOK_BUILD"] = "1"  # inherited by the kernels: HTML-only plotly output
    os.environ["TQDM_DISABLE"] = "1"  # progress bars are for people at a keyboard, not pages
    notebooks = toc_notebooks()
    if args.only:
        notebooks = [p for p in notebooks if p.stem in set(args.only)]
    weights = choose_weights(args.weights, notebooks)
    out = args.out.resolve()
    # A build under the device harness keeps its own cache: it must not stand in for a plain one.
    cache_dir = args.cache or (out / "cache" / "device-harness" if device_harness_requested() else out / "cache")
    announce_plan(notebooks, weights, args.smoke, cache_dir, render=not args.no_render, html=out / "html")
    stage = out / "stage"
    shutil.rmtree(out / "reports", ignore_errors=True)  # failure reports of an earlier build
    stage_sources(stage, stand_in=weights == "random")
    timings = {}
    cache = exec_cache.ExecutionCache(cache_dir, weights)
    shared_digest = exec_cache.shared_digest(ROOT)  # helpers, pins, Python: once per build
    ran, reused = [], []
    for number, path in enumerate(notebooks, start=1):
        progress = f"[{number}/{len(notebooks)}]"
        parameters = {"weights": weights}
        if args.smoke:
            nb = nbformat.read(path, as_version=4)
            parameters.update(nb.metadata.get("casebook", {}).get("smoke_parameters", {}))
        staged = stage / "notebooks" / path.name
        key = exec_cache.chapter_key(path, parameters, weights, ROOT, shared_digest)
        entry = None if args.force else cache.restore(path.stem, key, staged)
        if entry is not None:
            log(f"{progress} reused {shown(path)} from the execution cache (unchanged since {entry.executed_at})")
            reused.append(path.stem)
            timings[path.stem] = {"seconds": entry.seconds, "parameters": parameters, "cached": True}
            continue
        log(f"{progress} executing {shown(path)} with {parameters}")
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        seconds = execute(path, staged, parameters, args.timeout, out / "reports")
        log(f"{progress} {path.stem} done in {seconds:.1f} s")
        cache.store(path.stem, key, staged, parameters=parameters, seconds=seconds, executed_at=started)
        ran.append(path.stem)
        timings[path.stem] = {"seconds": round(seconds, 2), "parameters": parameters, "cached": False}
    log(f"executed: {', '.join(ran) or 'none'}; reused from the cache: {', '.join(reused) or 'none'}"
        + (" (FORCE: cache ignored)" if args.force else ""))
    (out / "timings.json").write_text(json.dumps(
        {"weights": weights, "device_harness": device_harness_requested(), "smoke": args.smoke,
         "notebooks": timings}, indent=2))
    status_page.write_status([stage / "notebooks" / p.name for p in notebooks], weights, out, stage)
    if not args.no_render:
        render(stage, out)
        write_exercises(toc_notebooks(), out / "html" / "exercises")
    return 0


if __name__ == "__main__":
    sys.exit(main())
