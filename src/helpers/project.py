"""Where the book lives: the one place its repository URL is defined.

The notebooks' Colab set-up cell, ``_config.yml`` and ``pyproject.toml`` repeat it; a test
checks that they all agree with this module.
"""

REPOSITORY_URL = "https://github.com/circuit-casebook/circuit-casebook"
BRANCH = "main"
DISTRIBUTION = "circuit-casebook"
# What the Colab cell installs: this package and its dependencies, straight from the repo.
COLAB_INSTALL_SPEC = f"{DISTRIBUTION} @ git+{REPOSITORY_URL}@{BRANCH}"


def setup_cell_source() -> str:
    """The first cell of every chapter (tagged ``remove-cell``), generated from this module.

    ``scripts/sync_setup_cells.py`` writes it into the notebooks; a test checks they match.
    """
    return f'''# Set-up (hidden in the book). On Colab this installs the book's helpers package and its
# dependencies from the repository, keeping Colab's own torch; elsewhere it installs nothing
# (run `make venv` in a clone of the repository instead).
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "{COLAB_INSTALL_SPEC}"],
        check=True,
    )

from helpers import setup_notebook

setup_notebook()'''


#: Generated student notebooks (solutions removed) live on this branch of the repository;
#: the publishing workflow pushes them there, and `make book` also puts them in the site.
STUDENT_BRANCH = "student-notebooks"


def student_notebook_links(stem: str) -> str:
    """The markdown line a chapter's exercises open with: Colab and download links (the
    download is a plain HTML link: the file is written into the site after Sphinx runs)."""
    path = REPOSITORY_URL.removeprefix("https://github.com/")
    colab = f"https://colab.research.google.com/github/{path}/blob/{STUDENT_BRANCH}/{stem}.ipynb"
    return (f"**Work on these exercises:** [open the exercises in Colab]({colab}) (solutions "
            f'removed), or <a href="../exercises/{stem}.ipynb" download>download the exercise '
            f"notebook</a>.")
