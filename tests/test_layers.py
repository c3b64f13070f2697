"""The layers of grace_fast import one way, bottom to top (docs/architecture.md): every import statement of every
module, those inside functions included, is read with `ast` and checked against LAYERS."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "grace_fast"
# bottom to top; a module imports its own layer or lower ones. A module is placed by its longest prefix here.
LAYERS = {
    "base": (
        "grace_fast.errors",
        "grace_fast.files",
        "grace_fast.arguments",
        "grace_fast.hardware",
        "grace_fast.shapes",
        "grace_fast._C",
    ),
    "ops": ("grace_fast.ops", "grace_fast.kernels"),
    "library": ("grace_fast.model", "grace_fast.data", "grace_fast.text", "grace_fast.eval"),
    "train": ("grace_fast.train",),
    "commands": (
        "grace_fast",  # the package's own __init__ (Predictor on first use) and __main__
        "grace_fast.cli",
        "grace_fast.evaluate",
        "grace_fast.predict",
        "grace_fast.explain",
        "grace_fast.demo",
    ),
}
RANK = {prefix: rank for rank, prefixes in enumerate(LAYERS.values()) for prefix in prefixes}
NAMES = list(LAYERS)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether name is a module or package of the source tree, or the extension (grace_fast._C, maybe unbuilt)."""
    if name in RANK:
        return True
    relative = Path(*name.split("."))
    return (PACKAGE.parent / relative.with_suffix(".py")).is_file() or (PACKAGE.parent / relative).is_dir()


def imports(path: Path, here: str | None = None, *, typing: bool = True) -> list[tuple[int, str]]:
    """(line, module) of each grace_fast module that the file at path (module `here`, by default the one path
    names) imports, anywhere in it; typing=False leaves out those under `if TYPE_CHECKING:`."""
    here = here or module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skipped = set() if typing else {id(n) for block in ast.walk(tree) if _type_checking(block) for n in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if is_module(f"{base}.{alias.name}")]
            found += [(node.lineno, name) for name in submodules or [base]]
    return [(line, name) for line, name in found if name == "grace_fast" or name.startswith("grace_fast.")]


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def layer(module: str) -> int:
    """The rank in LAYERS of a grace_fast module (the longest prefix that names it)."""
    prefixes = [p for p in RANK if module == p or module.startswith(p + ".")]
    if not prefixes:
        raise LookupError(f"{module} is in no layer: add it to LAYERS in {__file__} and docs/architecture.md")
    return RANK[max(prefixes, key=len)]


def upward_imports(root: Path = PACKAGE) -> list[str]:
    """One line per import of a higher layer by a lower one in the modules under root."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        source = module_name(path)
        for line, target in imports(path):
            if layer(target) > layer(source):
                problems.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {source} ({NAMES[layer(source)]}) imports "
                    f"{target} ({NAMES[layer(target)]}), a higher layer"
                )
    return problems


def test_no_layer_imports_a_higher_one():
    assert upward_imports() == []


def test_no_two_modules_import_each_other():
    """Within a layer too (as model/io.py and model/model.py once did, lazily); type-only imports aside."""
    edges = {(module_name(p), target) for p in PACKAGE.rglob("*.py") for _, target in imports(p, typing=False)}
    assert sorted((a, b) for a, b in edges if a < b and (b, a) in edges) == []


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer(module_name(path))


@pytest.mark.parametrize(
    "statement, found",
    [
        ("from grace_fast.train.task import GraceClassifier", "grace_fast.train.task"),
        ("from grace_fast.train import task", "grace_fast.train.task"),
        ("from ..train import task", "grace_fast.train.task"),
        ("import grace_fast.evaluate", "grace_fast.evaluate"),
    ],
    ids=["from-module", "from-package", "relative", "import"],
)
def test_an_upward_import_inside_a_function_is_found(tmp_path, statement, found):
    """A lazy import of train by a data module, written each way Python allows, is found with its line."""
    path = tmp_path / "lazy.py"
    path.write_text(f"def load():\n    {statement}\n")
    upward = [
        (line, target)
        for line, target in imports(path, "grace_fast.data.lazy")
        if layer(target) > layer("grace_fast.data")
    ]
    assert upward == [(2, found)]
