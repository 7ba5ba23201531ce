"""The published site: .github/workflows/book.yml builds the book with the README's own
command and deploys it to GitHub Pages; actionlint finds nothing wrong in it; the README
links the site at the address _config.yml's repository gives, and the Colab links too.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from dmlutils.notebook_tools import pages_url, repository  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
README = (ROOT / "README.md").read_text()


def actionlint() -> str:
    """The actionlint of the dev extras (beside this Python), else one on PATH."""
    beside = Path(sys.executable).with_name("actionlint")
    found = str(beside) if beside.is_file() else shutil.which("actionlint")
    assert found, ("actionlint is not installed: it comes with the dev extras "
                   "(pip install -c constraints.txt -e \".[dev]\"; `make test` does it)")
    return found


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([actionlint(), "-no-color", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=120)


def workflow() -> dict:
    # PyYAML reads the key `on:` as True (YAML 1.1)
    return {("on" if key is True else key): value for key, value in yaml.safe_load(WORKFLOW.read_text()).items()}


def steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def test_actionlint_finds_nothing_wrong_in_the_workflow():
    done = lint(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_would_catch_a_broken_workflow(tmp_path):
    """The check above can fail: a misspelt permission and an unknown input are reported."""
    broken = tmp_path / ".github" / "workflows" / "book.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WORKFLOW.read_text().replace("id-token: write", "id-tokens: write").replace("path: _build/html", "paths: _build/html"))
    done = subprocess.run([actionlint(), "-no-color", str(broken)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "id-tokens" in done.stdout and "paths" in done.stdout


def test_the_workflow_builds_with_the_readmes_command_on_every_push_to_main_and_deploys_to_pages():
    flow = workflow()
    assert flow["on"]["push"]["branches"] == ["main"]
    assert flow["permissions"]["pages"] == "write" and flow["permissions"]["id-token"] == "write"
    jobs = flow["jobs"]
    commands = [step["run"].strip() for job in jobs.values() for step in steps(job) if "run" in step]
    assert commands == ["make book"], f"the workflow's steps must be the README's own commands, not {commands}"
    assert "make book" in re.search(r"```bash\n(.*?)```", README, re.S).group(1), "the README's two commands changed"
    uses = {step["uses"].split("@")[0]: step for job in jobs.values() for step in steps(job) if "uses" in step}
    # the HTML is where `make book` puts it (dmlutils.book.build_book: <root>/_build/html)
    assert uses["actions/upload-pages-artifact"]["with"]["path"] == "_build/html"
    assert "actions/deploy-pages" in uses
    deploy = next(job for job in jobs.values() if any(s.get("uses", "").startswith("actions/deploy-pages") for s in steps(job)))
    assert deploy["environment"]["name"] == "github-pages"
    build = next(name for name, job in jobs.items() if any("run" in s for s in steps(job)))
    assert deploy["needs"] == build


def test_the_workflow_builds_with_the_python_of_environment_yml():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = next(d for d in environment["dependencies"] if isinstance(d, str) and d.startswith("python="))
    setup = [s for job in workflow()["jobs"].values() for s in steps(job) if s.get("uses", "").startswith("actions/setup-python")]
    assert [str(s["with"]["python-version"]) for s in setup] == [python.split("=", 1)[1]]


def test_the_readme_links_the_site_at_the_address_config_yml_gives():
    expected = pages_url(ROOT)
    url, _ = repository(ROOT)
    owner, name = url.removeprefix("https://github.com/").split("/")
    assert expected == f"https://{owner.lower()}.github.io/{name}/"
    linked = set(re.findall(r"https://[A-Za-z0-9-]+\.github\.io/[^\s>)]*", README))
    assert linked == {expected}, f"the README links {linked}; _config.yml's repository url gives {expected}"
    assert "_config.yml" in README[README.index(expected) - 50: README.index(expected) + 400], "say where the address comes from"


def test_the_readmes_colab_links_point_at_the_repository_of_config_yml():
    url, branch = repository(ROOT)
    slug = url.removeprefix("https://github.com/")
    links = re.findall(r"https://colab\.research\.google\.com/github/([^\s>)]+)", README)
    assert links, "the README's Run in Colab section links a chapter"
    for link in links:
        assert link.startswith(f"{slug}/blob/{branch}/notebooks/") and (ROOT / link.split(f"/blob/{branch}/", 1)[1]).is_file(), link


def test_pages_url_of_a_user_site_and_of_a_project_site(tmp_path):
    for repo, site in [("https://github.com/Some-One/book", "https://some-one.github.io/book/"),
                       ("https://github.com/some-one/Some-One.github.io", "https://some-one.github.io/")]:
        (tmp_path / "_config.yml").write_text(yaml.safe_dump({"repository": {"url": repo}}))
        assert pages_url(tmp_path) == site
