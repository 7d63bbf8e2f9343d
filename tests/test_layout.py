"""The package layout keeps its promises: ``core`` is pure, services never import the web
layer, tracking never imports delivery, and no module imports another inside a function to
hide a circle. Read from the source files, so nobody has to remember."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "responder"
SERVICES = {"funnel", "audience", "tracking", "delivery", "inbound", "templating"}
# Command-line entry points start what they run lazily, so ``responder --help`` stays fast.
LAZY_ALLOWED = {"responder.cli", "responder.app"}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, imported inside a function) for every import in the file."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found += [(f"{target}.{alias.name}", node.col_offset > 0) for alias in node.names]
            found.append((target, node.col_offset > 0))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.col_offset > 0) for alias in node.names]
    return found


def area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else "top"


MODULES = modules()


@pytest.mark.parametrize("name", sorted(m for m in MODULES if area(m) == "core"))
def test_core_imports_only_the_standard_library_and_core(name: str) -> None:
    for target, _ in imports(name, MODULES[name]):
        top = target.split(".")[0]
        if top == "responder":
            assert area(target) == "core", f"{name} imports {target}"
        else:
            assert top in sys.stdlib_module_names or top == "__future__", f"{name} imports {target}"


def test_services_do_not_import_web_and_tracking_not_delivery() -> None:
    wrong = []
    for name, path in MODULES.items():
        for target, _ in imports(name, path):
            if not target.startswith("responder.") or target not in MODULES:
                continue
            if area(name) in SERVICES and area(target) == "web":
                wrong.append(f"{name} → {target}")
            if area(name) == "tracking" and area(target) == "delivery":
                wrong.append(f"{name} → {target}")
    assert wrong == []


def test_no_import_inside_a_function() -> None:
    lazy = [
        f"{name} → {target}"
        for name, path in MODULES.items()
        if name not in LAZY_ALLOWED
        for target, inside in imports(name, path)
        if inside and target.startswith("responder")
    ]
    assert lazy == []


def test_no_circle_between_modules() -> None:
    graph = {name: {t for t, _ in imports(name, path) if t in MODULES and t != name} for name, path in MODULES.items()}
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            raise AssertionError(" → ".join([*trail[trail.index(node) :], node]))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            # A package's __init__ importing its own modules is how packages work, not a circle.
            if not nxt.startswith(node + "."):
                visit(nxt, [*trail, node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])


def _writes_outside_facts(name: str, path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if name != "responder.delivery.outbox" and isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if {"next_attempt_at", "message_id", "template_name"} <= keys:
                found.append(f"{name}:{node.lineno} builds an outbox row (delivery.outbox.outbox_row builds them)")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Message":
            found.append(f"{name}:{node.lineno} builds a Message row")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Event":
            found.append(f"{name}:{node.lineno} builds an Event row")
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr in ("status", "last_human_at"):
                    owner = ast.unparse(target.value)
                    if "subscriber" in owner or owner in ("s", "sub"):
                        found.append(f"{name}:{node.lineno} sets {owner}.{target.attr}")
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(".values"):
            chain = ast.unparse(node.func)
            keys = {k.arg for k in node.keywords}
            if "update(Subscriber)" in chain and keys & {"status", "last_human_at"}:
                found.append(f"{name}:{node.lineno} updates subscribers' {sorted(keys)}")
    return found


def test_events_statuses_activity_and_outbox_rows_have_one_writer() -> None:
    """An event row, a subscriber's status and their last activity are written by
    ``funnel/facts.py`` only (its docstring names the bulk paths of tracking and delivery), and
    an outbox row is built by ``delivery/outbox.py`` only."""
    wrong = [
        line
        for name, path in MODULES.items()
        if name != "responder.funnel.facts"
        for line in _writes_outside_facts(name, path)
    ]
    assert wrong == []
