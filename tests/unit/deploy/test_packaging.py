"""Each part declares what it imports (pyproject.toml), and every declared package is
pinned once (build/requirements.txt, build/requirements-engine.txt)."""

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions

import pytest

from paths import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIN_FILES = [ROOT / "build" / "requirements.txt", ROOT / "build" / "requirements-engine.txt"]
OWN = {"gateway", "engine_contract", "llama_engine", "triton_python_backend_utils"}  # ours, or Triton's stub's


def normal(name: str) -> str:
    return re.split(r"[\[<>=;\s]", name, maxsplit=1)[0].lower().replace("_", "-")


def pins() -> list[str]:
    return [normal(line) for f in PIN_FILES for line in f.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def declared(*extras: str) -> set[str]:
    names = set(PYPROJECT["dependencies"])
    for extra in extras:
        names |= set(PYPROJECT["optional-dependencies"][extra])
    return {normal(n) for n in names}


def imported_distributions(*folders: str) -> dict[str, str]:
    """Third-party distribution -> a file importing it, over the ``.py`` files of ``folders``."""
    providers = packages_distributions()
    found = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            if any(part in {".cache", "results"} for part in path.parts):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top in OWN or top not in providers:
                        continue
                    for dist in providers[top]:
                        found.setdefault(normal(dist), str(path.relative_to(ROOT)))
    return found


def test_every_declared_package_is_pinned_exactly_once():
    pinned = pins()
    everything = declared(*PYPROJECT["optional-dependencies"])
    assert sorted(n for n in everything if pinned.count(n) != 1) == []
    assert len(pinned) == len(set(pinned)), "a package pinned twice"


def test_the_scripts_of_the_server_environment_read_the_engine_pins_and_write_none():
    # install.sh and build_llama_tools.sh (llama.cpp's tools from the same llama-cpp-python);
    # the guide compilers' and perf_analyzer's own environments keep their own pins
    for path in (ROOT / "build" / "install.sh", ROOT / "perf" / "build_llama_tools.sh"):
        text = path.read_text()
        assert not re.search(r"==\s*[0-9]|_VERSION=[0-9]", text), path
        assert "build/requirements-engine.txt" in text, path
    tools = subprocess.run(["bash", "-c", "sed -n 11,12p perf/build_llama_tools.sh > /tmp/_v.sh; "
                            "source /tmp/_v.sh; echo $VERSION"], cwd=ROOT, capture_output=True, text=True)
    assert tools.stdout.strip() == next(line.split("==")[1] for line in PIN_FILES[1].read_text().splitlines()
                                        if line.startswith("llama-cpp-python=="))


@pytest.mark.parametrize("folders, extras", [
    (("gateway", "engine_contract"), ()),
    (("model_repository/electron_cpu",), ("cpu-engine",)),
    (("tests",), ("cpu-engine", "postgres", "test")),
    (("perf",), ("cpu-engine", "postgres", "bench")),
])
def test_each_part_declares_what_it_imports(folders, extras):
    undeclared = {dist: where for dist, where in imported_distributions(*folders).items()
                  if dist not in declared(*extras)}
    assert undeclared == {}
