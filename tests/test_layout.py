"""The package layout is the architecture (docs/extending.md#layout draws it): every import between harness's packages
points down the layer list below, never up or sideways into a package of the same layer; the sizes hold (modules,
functions, classes); and the layout picture in the docs names each package once, and only packages that exist.
The graph is read with ``ast`` from the source, imports inside functions included."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from import_graph import imports, modules

# bottom to top: a package may import from the layers below it and from its own package only
LAYERS = [
    ["reference"],                    # the NVFP4 format from its definition: imports nothing of the harness
    ["core"],                         # the flat modules: errors, atomic, metrics, limits, checkpoint, baselines, ...
    ["data", "tiny", "texts"],
    ["tasks"],
    ["backends"],
    ["models"],
    ["config"],
    ["report"],
    ["recipes"],
    ["quant"],
    ["stages"],
    ["session"],
    ["sensitivity"],
    ["cli"],
    ["pytest_plugin"],
]
MODULE_MAX, FUNCTION_MAX, CLASS_MAX = 300, 60, 200
# what is still over the limits; the list may only shrink: a name here that now fits fails too, so it is taken off
OVER: set[str] = set()
SESSION_MAX = 150  # the gate session owns memoisation and the engine's lifetime only (harness/session/gate.py)


def unit(module: str, root: Path) -> str:
    """The package a module belongs to (``core`` for the flat modules of harness/ and harness itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (root / "harness" / parts[1]).is_dir() else "core"


def layer_of(u: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if u in names)


def test_every_package_is_in_one_layer(root):
    packages = {p.name for p in (root / "harness").iterdir() if (p / "__init__.py").exists()}
    listed = [u for names in LAYERS for u in names if u != "core"]
    assert sorted(listed) == sorted(set(listed)) == sorted(packages)


def wrong_way(m: str, path: Path, mods: dict, root: Path) -> list[str]:
    """The imports of module ``m`` (source at ``path``) that point up or sideways."""
    src = unit(m, root)
    return [f"{m} ({src}) -> {dep} ({unit(dep, root)})" for dep in sorted(imports(path, mods))
            if unit(dep, root) != src and layer_of(unit(dep, root)) >= layer_of(src)]


def test_imports_point_down_the_layers(root):
    mods = modules(root)
    wrong = [w for m, path in mods.items() for w in wrong_way(m, path, mods, root)]
    assert not wrong, "imports up or sideways:\n" + "\n".join(wrong)


def test_an_import_up_or_sideways_is_caught(root, tmp_path):
    """The check above, on a data module that imports the judge inside a function (up) and one of tiny that imports
    data (the same layer): both found, and an import down (errors) is not."""
    mods = modules(root)
    f = tmp_path / "m.py"
    f.write_text("from harness.errors import HarnessError\n\ndef f():\n    from harness.stages.judge import judge\n")
    assert wrong_way("harness.data.rules", f, mods, root) == [
        "harness.data.rules (data) -> harness.stages.judge (stages)"]
    f.write_text("import harness.data.rules\n")
    assert wrong_way("harness.tiny.corpus", f, mods, root) == ["harness.tiny.corpus (tiny) -> harness.data.rules (data)"]


def sizes(root: Path) -> set[str]:
    over = set()
    for path in sorted((root / "harness").rglob("*.py")):
        rel, src = path.relative_to(root).as_posix(), path.read_text()
        if src.count("\n") > MODULE_MAX:
            over.add(f"module {rel}")

        def walk(node, prefix=""):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    n = child.end_lineno - child.lineno + 1
                    kind = "class" if isinstance(child, ast.ClassDef) else "function"
                    if n > (CLASS_MAX if kind == "class" else FUNCTION_MAX):
                        over.add(f"{kind} {rel}:{prefix}{child.name}")
                    walk(child, f"{prefix}{child.name}.")

        walk(ast.parse(src))
    return over


def test_modules_functions_and_classes_stay_small(root):
    over = sizes(root)
    assert over - OVER == set(), "over the size limits: " + ", ".join(sorted(over - OVER))
    assert OVER - over == set(), "fits now, take it off OVER: " + ", ".join(sorted(OVER - over))


def test_the_session_is_its_lifecycle_only(root):
    """GateSession: no base classes (no mixins reading its private state), at most SESSION_MAX lines, and none of
    its methods longer than its constructor's 20-odd lines: the steps are functions elsewhere (baselines, judging,
    tasks, flow)."""
    tree = ast.parse((root / "harness/session/gate.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GateSession")
    assert cls.bases == [] and cls.end_lineno - cls.lineno + 1 <= SESSION_MAX
    methods = {f.name: f.end_lineno - f.lineno + 1 for f in cls.body if isinstance(f, ast.FunctionDef)}
    assert max(n for m, n in methods.items() if m != "__init__") <= 12, methods


def test_the_layout_picture_names_each_package_once(root):
    """The README's layout: the package tree, one line per package (``├── <name>/``); docs/extending.md#layout:
    every layer's packages in the layer table, in this file's order."""
    def section(path: str) -> str:
        return (root / path).read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]

    tree = re.findall(r"^\s*[├└]── (\w+)/", section("README.md"), re.M)
    packages = {p.name for p in (root / "harness").iterdir() if (p / "__init__.py").exists()}
    assert sorted(tree) == sorted(packages), (tree, packages)
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", section("docs/extending.md"), re.M)
    assert [[w.strip("` ") for w in names.split(",")] for _, names in rows] == LAYERS[::-1][:len(rows)] \
        and len(rows) == len(LAYERS), rows


def test_the_extension_table_names_files_that_hold_its_tables(root):
    """docs/extending.md's "to add" table: every harness path it names exists, and every table it names in
    capitals (`LIMITS`, `RULES`, `TASKS`, ...) is assigned at the top of one of the files named in the same row."""
    text = (root / "docs/extending.md").read_text().split("## Extending", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in text.splitlines() if r.startswith("| a ")]
    assert len(rows) >= 4, rows  # a backend, a gated statistic, a dataset rule, a task
    for row in rows:
        files = [root / f for f in re.findall(r"`(harness/[\w/]+\.py)`", row)]
        assert all(f.exists() for f in files), row
        for table in re.findall(r"`([A-Z][A-Z_]+)`", row):
            where = files + [root / f for f in re.findall(r"`(tests/[\w/]+\.py)`", row)]
            assigned = {t.id for f in where for node in ast.parse(f.read_text()).body
                        if isinstance(node, (ast.Assign, ast.AnnAssign))
                        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                        if isinstance(t, ast.Name)}
            assert table in assigned, (table, row[:80])


def test_every_task_is_compared_with_lm_eval(root):
    """A task added to TASKS is compared with lm-evaluation-harness item by item once its YAML is named there."""
    from harness.tasks import TASKS

    tree = ast.parse((root / "tests/test_tasks_lm_eval.py").read_text())
    yaml = next(ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "LM_EVAL_YAML")
    assert sorted(yaml) == sorted(TASKS)


HEAVY_LIBS = {"torch", "transformers", "vllm", "llmcompressor", "compressed_tensors", "matplotlib", "datasets", "numpy",
              "scipy", "pyarrow", "safetensors", "tokenizers", "huggingface_hub", "gguf", "resvg_py", "pytest"}
# modules whose function-local imports are there on purpose for another reason than a heavy library, said here once:
CLI = "each command imports what it runs: `harness --help` starts in ~0.1 s, not ~0.5 s (pydantic, the session)"
PLUGIN = ("loaded in every pytest run of a project that installs the harness, gating or not: what a hook needs is "
          "imported by that hook (0.3 s, not 0.7 s)")
LAZY_BY_DESIGN = {**{f"harness/cli/{m}.py": CLI for m in ("main", "parser", "gate_commands", "tool_commands", "init")},
                  **{f"harness/pytest_plugin/{m}.py": PLUGIN
                     for m in ("__init__", "state", "gate_tests", "fixtures", "ordering")}}


def _top_imports(tree) -> list:
    return [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]


def _names(node) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
    return [a.name for a in node.names]


def heavy_modules(root: Path) -> set[str]:
    """The harness modules that load a heavy library (HEAVY_LIBS) when imported: through their own top-level
    imports, their packages' or the harness modules those import."""
    mods = modules(root)
    trees = {m: ast.parse(p.read_text()) for m, p in mods.items()}
    heavy: dict[str, bool] = {}

    def visit(m: str, stack: tuple = ()) -> bool:
        if m in heavy or m in stack:
            return heavy.get(m, False)
        deps, h = set(), False
        parts = m.split(".")
        deps |= {".".join(parts[:i]) for i in range(2, len(parts))}  # its packages' __init__
        for node in _top_imports(trees[m]):
            for n in _names(node):
                if n in mods:
                    deps.add(n)
                elif n.split(".")[0] in HEAVY_LIBS:
                    h = True
        h = any([visit(d, stack + (m,)) for d in deps if d in mods and d != m]) or h
        heavy[m] = h
        return h

    for m in mods:
        visit(m)
    return {m for m, h in heavy.items() if h}


def test_imports_inside_functions_keep_heavy_libraries_out_of_start_up(root):
    """An import inside a function is of a heavy library (torch, vLLM, llm-compressor, transformers, numpy, ...) or of
    a harness module that loads one; else it says why on its line or the line above, or its module is one of
    LAZY_BY_DESIGN. Everything else is imported at the top of its module."""
    mods = modules(root)
    heavy = heavy_modules(root)
    assert "harness.reference.nvfp4" in heavy and "harness.metrics" not in heavy  # numpy at its top / the light core
    loose = []
    for m, path in sorted(mods.items()):
        rel = path.relative_to(root).as_posix()
        if rel in LAZY_BY_DESIGN:
            continue
        src = path.read_text()
        lines = src.split("\n")
        for fn in ast.walk(ast.parse(src)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)) or getattr(node, "level", 0):
                    continue
                above = lines[node.lineno - 2].strip()  # a comment line of its own, not another line's comment
                said = above.startswith("#") or "#" in "".join(lines[node.lineno - 1:node.end_lineno])
                names = _names(node)
                if said or any(n.split(".")[0] in HEAVY_LIBS or n in heavy or n == m for n in names):
                    continue
                if any(n.split(".")[0] not in {"harness", *sys.stdlib_module_names} for n in names):
                    continue  # a light third-party library (yaml, pydantic, ...) imported where it is used
                loose.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert not loose, "light imports inside functions (move them to the top, or say why):\n" + "\n".join(loose)
