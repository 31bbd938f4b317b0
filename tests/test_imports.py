"""The import graph of src/numformer: no module imports another's private name, and no import
circle, counting the imports inside functions (a circle hidden in a function is still a circle).

Read from the source with ast, so nothing is imported and nothing runs."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "numformer").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every import statement of the module, anywhere in it."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full, None) if full in known else (base, alias.name))
    return [(m, n) for m, n in found if m == "numformer" or m.startswith("numformer.")]


def graph() -> tuple[dict[str, set[str]], list[str]]:
    known = modules()
    edges, private = {m: set() for m in known}, []
    for name, path in known.items():
        for module, imported in imports(name, path, known):
            if imported and imported.startswith("_") and not imported.startswith("__"):
                private.append(f"{name} imports {module}.{imported}")
            if module in known and module != name:
                edges[name].add(module)
    return edges, private


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, groups, counter = {}, {}, set(), [], [], 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_no_module_imports_a_private_name_of_another():
    _, private = graph()
    assert private == []


def test_no_import_circle():
    edges, _ = graph()
    assert circles(edges) == []


def test_the_check_finds_a_circle_and_a_private_import():
    """The two checks above can fail: a made-up graph with a circle is reported, a tree is not."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    edges, _ = graph()
    assert "numformer.model.gpt" in edges and edges["numformer.model.gpt"]   # the real graph was read


def test_imports_are_read_inside_functions_too(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from numformer.data.tokenizer import _codes\n    from . import sibling\n")
    known = {"numformer.data.mod": source, "numformer.data.sibling": source}
    assert imports("numformer.data.mod", source, known) == [("numformer.data.tokenizer", "_codes"),
                                                             ("numformer.data.sibling", None)]
