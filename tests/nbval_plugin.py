"""pytest plugin for the strict nbval re-run (loaded with -p nbval_plugin).

HTML, JavaScript and plotly outputs carry random element ids and are skipped; stderr is
skipped (library warnings); everything else, text and printed numbers, must match.
"""


def pytest_collectstart(collector):
    if getattr(collector, "fspath", None) is not None and collector.fspath.ext == ".ipynb":
        collector.skip_compare += (
            "text/html",
            "application/javascript",
            "application/vnd.plotly.v1+json",
            "stderr",
        )
