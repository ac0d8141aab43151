"""app/ installs as the package `claude_nexus_proxy`: that holds only while every import inside it is relative."""
import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
INSTALLED = "claude_nexus_proxy"


def _absolute_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in ("app", "config"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    return found


def test_no_module_under_app_imports_app_or_config_absolutely():
    offenders = [hit for path in sorted(APP.rglob("*.py")) for hit in _absolute_imports(path)]
    assert offenders == [], ("use relative imports inside app/ (`from .errors import …`, `from ..masking import …`); "
                             "installed, the package is not named `app`:\n" + "\n".join(offenders))


def test_every_subpackage_of_app_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"][INSTALLED] == "app"
    wanted = {".".join([INSTALLED, *p.parent.relative_to(APP).parts]) for p in APP.rglob("__init__.py")
              if "__pycache__" not in p.parts}
    assert wanted - set(config["packages"]) == set(), "add the new subpackage to pyproject.toml's packages"


def test_nothing_generic_is_installed_at_the_top_level():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {name.split(".")[0] for name in config["packages"]} == {INSTALLED}
    assert not config.get("py-modules")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"claude-nexus-proxy": f"{INSTALLED}.cli:main"}
