"""Every variable the proxy reads is in the README's configuration table and in .env.example."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# read by the code but not the user's to set: the CLI hands these to the gunicorn config, or a browser check
INTERNAL = {"NEXUS_ENV_FILE", "NEXUS_ENV_LOADED", "DISPLAY", "WAYLAND_DISPLAY"}


def _variables_read() -> set[str]:
    names = set()
    for path in [*ROOT.joinpath("app").rglob("*.py"), *ROOT.joinpath("config").rglob("*.py")]:
        text = path.read_text()
        names |= set(re.findall(r'data_key="([A-Z][A-Z0-9_]+)"', text))
        names |= set(re.findall(r'\b(?:environ|env)(?:\.get\(|\[)"([A-Z][A-Z0-9_]+)"', text))
    return names - INTERNAL


def test_the_configuration_table_and_env_example_name_every_variable():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    in_table = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    in_example = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    read = _variables_read()
    assert {"FORWARDED_ALLOW_IPS", "OAUTH_AUTHORIZE_URL", "PORT"} <= read  # the scan finds both kinds of read
    assert read - in_table == set(), "add these to the README's configuration table"
    assert read - in_example == set(), "add these to .env.example"
