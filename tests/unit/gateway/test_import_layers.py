"""The gateway's imports point down its layers, never up or sideways:

    server -> api -> chat | accounts -> tools -> engine -> leaves

(leaves: ``errors``, ``openai_schema``, ``model_artifacts``, ``settings``). A package
may import its own modules and any layer below it; chat and accounts sit side by
side and do not import each other. Imports inside functions count too."""

import ast
from pathlib import Path

from tests.paths import ROOT

GATEWAY = ROOT / "gateway"
LEAVES = {"errors", "openai_schema", "model_artifacts", "settings"}
RANK = {"server": 5, "api": 4, "chat": 3, "accounts": 3, "tools": 2, "engine": 1, **{leaf: 0 for leaf in LEAVES}}


def layer_of(module: str) -> str | None:
    """``gateway.chat.completion`` -> ``chat``; ``gateway`` itself -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "gateway" and len(parts) > 1 else None


def gateway_imports(path: Path):
    """(line, imported module) of every ``gateway.*`` import in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.startswith("gateway."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("gateway"):
            if node.module == "gateway":
                yield from ((node.lineno, f"gateway.{a.name}") for a in node.names)
            else:
                yield node.lineno, node.module


def violations(gateway: Path = GATEWAY):
    for path in sorted(gateway.rglob("*.py")):
        relative = path.relative_to(gateway.parent).with_suffix("")
        source = layer_of(".".join(relative.parts))
        if source is None:  # gateway/__init__.py
            continue
        for line, module in gateway_imports(path):
            target = layer_of(module)
            if target == source:
                continue
            if target not in RANK or RANK[target] >= RANK[source]:
                yield f"{relative}.py:{line}: {source} imports {module}"


def test_every_gateway_module_belongs_to_a_layer():
    packages = {p.name for p in GATEWAY.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in GATEWAY.glob("*.py") if p.stem != "__init__"}
    assert packages | modules == set(RANK)


def test_imports_point_down_the_layers():
    assert list(violations()) == []


def test_the_check_sees_upward_and_sideways_imports(tmp_path):
    tree = {"chat/completion.py": "def f():\n    from gateway.api.app import create_app\n",
            "accounts/ledger.py": "from gateway.chat import completion\n",
            "engine/proto.py": "from gateway.errors import APIError\nfrom gateway.engine import x\n",
            "tools/filler.py": "import gateway.settings\nfrom gateway import chat\n"}
    for name, text in tree.items():
        (tmp_path / "gateway" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "gateway" / name).write_text(text)
    assert list(violations(tmp_path / "gateway")) == [
        "gateway/accounts/ledger.py:1: accounts imports gateway.chat",
        "gateway/chat/completion.py:2: chat imports gateway.api.app",
        "gateway/tools/filler.py:2: tools imports gateway.chat",
    ]
