"""The package's metadata: console scripts that exist, extras pinned as the requirements files,
and a one-way house (no module imports a command, the trainer or configs/ where it must not)."""

import ast
import importlib
import pathlib
import re
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins(path: pathlib.Path) -> set[str]:
    """The ``name==version`` lines of a requirements file and the files it includes."""
    out = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out |= pins(path.parent / line[3:].strip())
        elif "==" in line:
            out.add(line)
    return out


def test_every_console_script_points_at_a_command_run_function():
    scripts = PYPROJECT["project"]["scripts"]
    assert {"maskfeat-train", "maskfeat-eval", "maskfeat-export", "maskfeat-plan"} <= set(scripts)
    for name, target in scripts.items():
        module_name, _, function = target.partition(":")
        assert module_name.startswith("maskfeat_jax.commands."), name
        module = importlib.import_module(module_name)  # all in one process: no flag clashes
        assert callable(getattr(module, function)), target
        assert callable(module.main) and module.__doc__, module_name


def test_extras_pin_what_the_requirements_files_pin():
    extras = {k: set(v) for k, v in PYPROJECT["project"]["optional-dependencies"].items()}
    runtime = pins(ROOT / "requirements.txt")
    assert extras["test"] == pins(ROOT / "requirements-test.txt") - runtime
    assert extras["plan"] == pins(ROOT / "requirements-plan.txt") - runtime
    jax = next(p for p in runtime if p.startswith("jax=="))
    version = jax.split("==")[1]
    assert extras["tpu"] == {f"jax[tpu]=={version}"}
    assert extras["cuda"] == {f"jax[cuda12]=={version}"}


def test_dependencies_are_read_from_requirements_txt():
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["dependencies"]
    assert dynamic == {"file": ["requirements.txt"]}
    assert "dependencies" in PYPROJECT["project"]["dynamic"]


def _package_imports(path: pathlib.Path) -> list[tuple[str, bool]]:
    """(imported module, whether at module level) of every import of maskfeat_jax or configs."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith(("maskfeat_jax", "configs")):
                out.append((name, id(node) in top))
    return out


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("evaluate.py", r"maskfeat_jax\.(trainer|loop|commands)"),
        ("visualize.py", r"maskfeat_jax\.(trainer|loop|evaluate|commands)"),
        ("data", r"maskfeat_jax\.(tasks|trainer|loop|pretrain|finetune|commands)"),
        ("models", r"maskfeat_jax\.(tasks|trainer|loop|data|commands)"),
        ("ops", r"maskfeat_jax\.(models|tasks|trainer|loop|data|commands)"),
        ("interop", r"maskfeat_jax\.(trainer|loop|commands)"),
        ("", r"^configs"),
    ],
)
def test_lower_modules_do_not_import_higher_ones(module, forbidden):
    target = ROOT / "maskfeat_jax" / module
    paths = [target] if target.is_file() else sorted(target.rglob("*.py"))
    found = [
        f"{p.relative_to(ROOT)} imports {name}"
        for p in paths
        for name, _ in _package_imports(p)
        if re.search(forbidden, name)
    ]
    assert not found


def test_package_imports_are_at_the_top_unless_a_comment_says_why():
    lazy = []
    for path in sorted((ROOT / "maskfeat_jax").rglob("*.py")):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            stripped = line.strip()
            if line.startswith((" ", "\t")) and stripped.startswith(
                ("from maskfeat_jax", "import maskfeat_jax")
            ):
                context = " ".join(lines[max(0, number - 3) : number + 1])
                if "#" not in context:
                    lazy.append(f"{path.relative_to(ROOT)}:{number + 1}")
    assert not lazy


def test_no_package_module_is_over_500_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "maskfeat_jax").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long


def _module_name(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imported_package_modules(path: pathlib.Path, known: set[str]) -> set[str]:
    """The package modules a file imports (``from maskfeat_jax.x import y`` counts x.y when
    y is a module), anywhere in the file."""
    out = set()
    for name, _ in _package_imports(path):
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


def _runpy_aliases() -> dict[str, str]:
    """Modules kept for ``python -m`` that only run a command: module -> the command's module."""
    out = {}
    for path in (ROOT / "maskfeat_jax").rglob("*.py"):
        found = re.search(r'runpy\.run_module\(\s*"([\w.]+)"', path.read_text())
        if found:
            out[_module_name(path)] = found.group(1)
    return out


def test_every_python_m_alias_runs_an_existing_command():
    aliases = _runpy_aliases()
    assert {"maskfeat_jax.main", "maskfeat_jax.export", "maskfeat_jax.plan"} <= set(aliases)
    for alias, command in aliases.items():
        module = importlib.import_module(command)
        assert callable(module.main), (alias, command)


def _has_a_fast_test(path: pathlib.Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(
        isinstance(node, ast.FunctionDef)
        and node.name.startswith("test_")
        and not any("mark.slow" in ast.unparse(d) for d in node.decorator_list)
        for node in tree.body
    )


def test_the_fast_tier_reaches_every_module():
    """Every package module is imported by a unit or parity test file with a test outside
    ``slow`` (or by the helpers of tests/support/, or by a console-script command, which
    test_package imports), or by a module those import."""
    paths = {_module_name(p): p for p in (ROOT / "maskfeat_jax").rglob("*.py")}
    known = set(paths) | {"maskfeat_jax"}
    tests = [
        p
        for folder in ("unit", "parity")
        for p in (ROOT / "tests" / folder).rglob("test_*.py")
        if _has_a_fast_test(p)
    ]
    tests += list((ROOT / "tests" / "support").rglob("*.py"))
    reached = set().union(*(_imported_package_modules(p, known) for p in tests))
    reached |= {t.partition(":")[0] for t in PYPROJECT["project"]["scripts"].values()}
    frontier = set(reached)
    while frontier:
        frontier = set().union(
            *(_imported_package_modules(paths[m], known) for m in frontier if m in paths)
        )
        frontier -= reached
        reached |= frontier
    packages = {m for m, p in paths.items() if p.name == "__init__.py"}
    missing = set(paths) - reached - packages - set(_runpy_aliases())
    assert not missing, sorted(missing)
