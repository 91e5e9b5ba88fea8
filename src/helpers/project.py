"""Where the book lives: its home (repository URL) and release, read from ONE setting.

The one setting is ``pyproject.toml``'s ``[project.urls] Repository`` (and ``[project]
version``, whose tag ``v<version>`` is the release Colab installs). Everything else is
generated from it:

* the notebooks' first cell (:func:`setup_cell_source`, written by
  ``python scripts/sync_setup_cells.py``): on Colab it ``%pip install``\\ s this package at the
  release tag;
* the book's launch buttons and repository button: ``scripts/build_book.py`` writes
  :data:`REPOSITORY_URL` and :data:`RELEASE_TAG` into the staged ``_config.yml``
  (:func:`book_repository_config`); ``scripts/sync_setup_cells.py`` keeps the copy in the
  repository's ``_config.yml`` in step;
* the student-notebook links (:func:`student_notebook_links`, :func:`colab_url`);
* README's "Open in Colab" badge (:func:`readme_badge`, between ``<!-- colab-badge -->``
  markers; written by the sync script).

``tests/test_project.py`` fails if any copy disagrees. A fork re-homes the book by editing
that one line of ``pyproject.toml`` and running ``python scripts/sync_setup_cells.py``.

No torch import: the book build loads this file on its own. In a clone the setting is read
from ``pyproject.toml``; in an installed package (Colab) from the package's metadata, which
pip wrote from the same file.
"""

from __future__ import annotations

import re
from pathlib import Path

DISTRIBUTION = "circuit-casebook"
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _read_setting() -> tuple[str, str]:
    """``(repository URL, version)`` from pyproject.toml, else the installed metadata."""
    if _PYPROJECT.is_file():
        text = _PYPROJECT.read_text(encoding="utf-8")
        if re.search(rf'^name\s*=\s*"{DISTRIBUTION}"', text, flags=re.M):
            url = re.search(r'^\[project\.urls\][^\[]*?^Repository\s*=\s*"([^"]+)"', text,
                            flags=re.M | re.S)
            version = re.search(r'^version\s*=\s*"([^"]+)"', text, flags=re.M)
            if not url or not version:
                raise RuntimeError(
                    f"{_PYPROJECT} must set [project] version and [project.urls] Repository "
                    f"(the book's home, e.g. Repository = \"https://github.com/OWNER/NAME\")."
                )
            return url.group(1).rstrip("/"), version.group(1)
    from importlib import metadata

    meta = metadata.metadata(DISTRIBUTION)
    for entry in meta.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "repository":
            return url.strip().rstrip("/"), meta["Version"]
    raise RuntimeError(f"The installed {DISTRIBUTION} names no Repository URL in its metadata.")


REPOSITORY_URL, VERSION = _read_setting()
#: The release Colab installs and the launch buttons open: the git tag ``v<version>``.
RELEASE_TAG = f"v{VERSION}"
#: Kept for older imports: the branch of the repository's default page.
BRANCH = "main"
#: What the Colab cell installs: this package at the release tag, with its dependencies.
COLAB_INSTALL_SPEC = f"{DISTRIBUTION} @ git+{REPOSITORY_URL}@{RELEASE_TAG}"
#: Generated student notebooks (solutions removed) live on this branch of the repository;
#: the publishing workflow pushes them there, and `make book` also puts them in the site.
STUDENT_BRANCH = "student-notebooks"


def github_path() -> str:
    """``OWNER/NAME`` of the repository (its URL must be a GitHub one: Colab opens those)."""
    if not REPOSITORY_URL.startswith("https://github.com/"):
        raise RuntimeError(
            f"The book's home {REPOSITORY_URL!r} is not a https://github.com/OWNER/NAME URL; "
            f"Colab opens notebooks from GitHub. Set [project.urls] Repository in "
            f"pyproject.toml to one."
        )
    return REPOSITORY_URL.removeprefix("https://github.com/")


def colab_url(path: str, ref: str | None = None) -> str:
    """The Colab address of ``path`` (e.g. ``notebooks/00_tour.ipynb``) in the repository at
    ``ref`` (default: the release tag). ``scripts/student_notebooks.py`` may import this."""
    return f"https://colab.research.google.com/github/{github_path()}/blob/{ref or RELEASE_TAG}/{path}"


def readme_badge() -> str:
    """README's "Open in Colab" badge: the tour at the release tag."""
    return ("[![Open the tour in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url('notebooks/00_tour.ipynb')})")


def book_repository_config() -> dict:
    """The ``repository`` section of Jupyter Book's ``_config.yml`` (launch buttons)."""
    return {"url": REPOSITORY_URL, "path_to_book": "", "branch": RELEASE_TAG}


def _wrapped_url() -> str:
    """``git+<home>@<tag>`` for the set-up cell (IPython expands ``{_url}`` in ``%pip``)."""
    return f"git+{REPOSITORY_URL}@{RELEASE_TAG}"


def setup_cell_source() -> str:
    """The first cell of every chapter (tagged ``remove-cell``), generated from the setting.

    On Colab: if this package at :data:`VERSION` is not installed yet, ``%pip install`` it
    from the release tag (pip's own output, errors included, shows in the cell; a failure
    stops the cell with that pointer); restart the session only if the install replaced a
    package the session had already imported (any of them, found through
    ``importlib.metadata.packages_distributions``). Elsewhere it installs nothing.
    ``scripts/sync_setup_cells.py`` writes it into the notebooks; a test checks they match.
    """
    return f'''# Set-up (hidden in the book). On Colab this installs the book's helpers,
# release {RELEASE_TAG} of {REPOSITORY_URL},
# and what they need, keeping Colab's own torch. Elsewhere it installs
# nothing (run `make venv` in a clone of the repository instead).
import sys

if "google.colab" in sys.modules:
    from importlib import metadata

    def _installed(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    if _installed("{DISTRIBUTION}") != "{VERSION}":
        _dists = metadata.packages_distributions()  # import name -> packages
        _loaded = {{d: _installed(d) for m in list(sys.modules) if "." not in m
                   for d in _dists.get(m, [])}}
        _url = "{_wrapped_url()}"
        %pip install "{DISTRIBUTION} @ {{_url}}"
        if _installed("{DISTRIBUTION}") != "{VERSION}":
            raise RuntimeError(
                "Installing the book's helpers failed: pip's message is just "
                "above. Run this cell again; if it fails again, report pip's "
                "message to the book's issue tracker.")
        if any(_installed(n) != v for n, v in _loaded.items()):
            print("pip replaced a package this session had already imported: "
                  "restarting the session once. Then run all cells again.")
            import os

            os.kill(os.getpid(), 9)  # Colab restarts the session by itself

from helpers import setup_notebook

setup_notebook()'''


def student_notebook_links(stem: str) -> str:
    """The markdown line a chapter's exercises open with: Colab and download links (the
    download is a plain HTML link: the file is written into the site after Sphinx runs)."""
    colab = colab_url(f"{stem}.ipynb", STUDENT_BRANCH)
    return (f"**Work on these exercises:** [open the exercises in Colab]({colab}) (solutions "
            f'removed), or <a href="../exercises/{stem}.ipynb" download>download the exercise '
            f"notebook</a>.")
