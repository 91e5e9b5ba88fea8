"""The publishing workflow (.github/workflows/publish.yml): it cannot run here, so check it.

Its YAML is validated against GitHub's workflow schema (vendored by check-jsonschema, no
network), and its steps are held to the README: every command it runs is one the README
documents, with Makefile targets and variables that exist, so what runs here is what runs there.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "publish.yml"
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAKEFILE = (ROOT / "Makefile").read_text()


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _triggers(workflow: dict) -> dict:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True


def _runs(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def _uses(job: dict) -> list[str]:
    return [step["uses"] for step in job["steps"] if "uses" in step]


def _make_commands(job: dict) -> list[list[str]]:
    """Each `make ...` command of the job's steps, as words (GitHub expressions removed)."""
    commands = []
    for run in _runs(job):
        for line in run.splitlines():
            line = re.sub(r"\$\{\{.*?\}\}", "", line).strip()
            if line.startswith("make "):
                commands.append(shlex.split(line))
    return commands


def test_yaml_is_a_valid_github_workflow():
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_triggers_push_to_main_weekly_and_pull_requests(workflow):
    on = _triggers(workflow)
    assert on["push"]["branches"] == ["main"]
    assert "pull_request" in on
    [schedule] = on["schedule"]
    minute, hour, day, month, weekday = schedule["cron"].split()
    assert day == month == "*" and weekday != "*", "weekly: one day of the week"


def test_main_and_weekly_builds_use_real_weights_and_deploy(workflow):
    jobs = workflow["jobs"]
    book = jobs["book"]
    assert "pull_request" in book["if"] and "!=" in book["if"]
    [build] = _make_commands(book)
    assert build[:2] == ["make", "book"] and "MODEL_WEIGHTS=pretrained" in build
    build_line = next(run for run in _runs(book) if run.startswith("make book"))
    assert "schedule" in build_line and "FORCE=1" in build_line  # weekly: every chapter re-executed
    # A build that fell back to the stand-in must not be published.
    assert any("--require-weights pretrained" in run for run in _runs(book))
    uploads = [step["with"]["path"] for step in book["steps"] if step.get("uses", "").startswith("actions/upload-artifact")]
    assert "_build/html" in uploads and "_build/scorecards" in uploads
    pages = [step for step in book["steps"] if step.get("uses", "").startswith("actions/upload-pages-artifact")]
    assert pages and pages[0]["with"]["path"] == "_build/html"
    deploy = jobs["deploy"]
    assert deploy["needs"] == "book" and "refs/heads/main" in deploy["if"]
    assert any(u.startswith("actions/deploy-pages@") for u in _uses(deploy))
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert workflow["permissions"] == {"contents": "read"}  # the rest of the workflow cannot write
    # A number that does not reproduce fails the run after the site is deployed.
    reproduction = jobs["reproduction"]
    assert set(reproduction["needs"]) == {"book", "deploy"}
    assert any("--fail-on-differ" in run for run in _runs(reproduction))


def test_pull_requests_build_at_smoke_size_with_the_stand_in(workflow):
    smoke = workflow["jobs"]["smoke-book"]
    assert smoke["if"] == "github.event_name == 'pull_request'"
    [build] = _make_commands(smoke)
    assert build == ["make", "book", "MODEL_WEIGHTS=random", "SMOKE=1"]
    assert ["make", "test"] in _make_commands(workflow["jobs"]["test"])
    assert "if" not in workflow["jobs"]["test"]  # the suite runs on every event


def test_every_command_is_a_readme_command(workflow):
    targets = set(re.findall(r"^([a-z][\w-]*):", MAKEFILE, flags=re.M))
    for name, job in workflow["jobs"].items():
        for words in _make_commands(job):
            target = words[1]
            assert target in targets, f"{name}: make {target} is not a Makefile target"
            assert f"make {target}" in README, f"{name}: make {target} is not in the README"
            for assignment in words[2:]:
                variable = assignment.split("=")[0]
                assert f"$({variable})" in MAKEFILE, f"{name}: {variable} is not used by the Makefile"
                assert assignment in README, f"{name}: {assignment} is not documented in the README"
        for run in _runs(job):
            for script in re.findall(r"scripts/[\w./-]+\.py", run):
                assert (ROOT / script).exists(), script
                assert script in README, f"{name}: {script} is not in the README"
            assert not re.search(r"\bpip install\b", run), "install with the README's make commands"


def test_python_version_matches_the_readme(workflow):
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/setup-python"):
                version = step["with"]["python-version"]
                assert f"Python {version}" in README


def test_actions_are_pinned_to_a_version(workflow):
    for job in workflow["jobs"].values():
        for uses in _uses(job):
            assert re.fullmatch(r"[\w-]+/[\w-]+@v\d+", uses), uses
