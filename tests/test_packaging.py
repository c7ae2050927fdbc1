"""The package as it would be published: ``python -m build`` makes an sdist
and, from that sdist, a wheel; both pass ``twine check --strict``; the wheel,
installed into a fresh virtual environment, runs ``crew-budget demo`` offline.

The fresh venv gets the wheel and nothing else; its dependencies are borrowed
from the test environment's site-packages through a ``.pth`` line (appended
after its own site-packages, so ``crew_budget`` is imported from the wheel,
which the test checks). Offline throughout: ``--no-isolation`` builds with
the hatchling installed by the ``dev`` extra, pip runs with ``--no-index``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import tomllib

import crew_budget

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def test_proxy_extra_matches_the_proxy_requirements_file() -> None:
    extra = {_name(r) for r in _pyproject()["project"]["optional-dependencies"]["proxy"]}
    lines = (ROOT / "tests/litellm/proxy-requirements.txt").read_text().splitlines()
    listed = {_name(line) for line in lines if line.strip() and not line.startswith("#")}
    assert extra == listed
    assert "crewai" not in extra and "mcp" in extra  # mcp>=2.3: not combinable with crewai


def test_test_tools_are_not_runtime_dependencies() -> None:
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    runtime = [*project["dependencies"], *extras["crewai"], *extras["langchain"],
               *extras["redis"], *extras["metrics"], *extras["litellm"]]
    assert not {"vcrpy", "pytest", "build", "twine"} & {_name(r) for r in runtime}
    assert [_name(r) for r in extras["demo"]] == ["crew-budget", "vcrpy"]


@pytest.mark.slow
def test_build_check_install_the_wheel_and_run_the_demo_from_it(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "OPENAI_API_KEY") and not k.startswith("CREW_BUDGET_")}
    build = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir",
                            str(dist), str(ROOT)], capture_output=True, text=True, env=env,
                           timeout=600, check=False)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    version = crew_budget.__version__
    sdist = dist / f"crew_budget-{version}.tar.gz"
    wheel = dist / f"crew_budget-{version}-py3-none-any.whl"
    assert sorted(p.name for p in dist.iterdir()) == [wheel.name, sdist.name]
    twine = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(sdist),
                            str(wheel)], capture_output=True, text=True, env=env, timeout=120,
                           check=False)
    assert twine.returncode == 0, twine.stdout + twine.stderr
    assert twine.stdout.count("PASSED") == 2

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = Parser().parsestr(zf.read(f"crew_budget-{version}.dist-info/METADATA").decode())
    for packaged in ("crew_budget/py.typed", "crew_budget/budgets.schema.json",
                     "crew_budget/ledger/lua/reserve.lua",
                     "crew_budget/crewai/cassettes/research_crew.yaml",
                     "crew_budget/crewai/cassettes/research_crew_end_task.yaml"):
        assert packaged in names
    assert meta["Requires-Python"] == ">=3.11"
    assert "Programming Language :: Python :: 3.11" in meta.get_all("Classifier")
    assert {"crewai", "demo", "proxy", "redis", "metrics"} <= set(meta.get_all("Provides-Extra"))
    # vcrpy (the demo's cassette player) comes with demo (and all/dev), never with crewai.
    vcr = {re.sub(r"[\"']", "", r.partition("extra ==")[2]).strip()
           for r in meta.get_all("Requires-Dist") if r.startswith("vcrpy")}
    assert vcr == {"demo", "all", "dev"}, vcr

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                              "--no-deps", "--no-index", "--quiet", str(wheel)],
                             capture_output=True, text=True, env=env, timeout=300, check=False)
    assert install.returncode == 0, install.stderr
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()
    # The test environment's packages, after the venv's own (where the wheel is).
    (Path(site) / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run([str(python), "-c", "import crew_budget; print(crew_budget.__file__)"],
                           capture_output=True, text=True, env=env, check=True).stdout
    assert where.startswith(site), where

    script = venv / "bin" / "crew-budget"
    assert subprocess.run([str(script), "--version"], capture_output=True, text=True, env=env,
                          check=True).stdout == f"crew-budget {version}\n"
    offline = {**env, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
               "NO_PROXY": "", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
    demo = subprocess.run([str(script), "demo"], capture_output=True, text=True, env=offline,
                          cwd=tmp_path, timeout=300, check=False)
    assert demo.returncode == 0, demo.stderr[-3000:]
    out, soft = demo.stdout.split("Softer:")  # the hard stop, then on_exceed: end_task
    assert "offline replay, no API key needed" in out
    assert len(re.findall(r"researcher +gpt-4o +call", out)) == 5
    assert re.search(r"researcher +gpt-4o +BLOCKED .*no request", out)
    assert "Stopped: crew.kickoff() raised CrewBudgetExceeded" in out
    assert re.search(r"│ total +│.*│ +0\.0103824 │", out), out
    assert re.search(r"│ total +│.*│ +0\.01049955 │", soft), soft  # the writer ran too
