"""count_tokens against a real tokenizer: OpenAI's o200k_base and cl100k_base, whose vocabularies ship inside the
bpe-openai wheel (nothing is downloaded). The reference counts the same pieces the estimate covers (texts, tool
inputs and schemas as compact JSON) plus the same 3 tokens of framing per message.

The target is within 10% on Claude Code's captured bodies (tests/fixtures); the README reports the figures.
"""
import glob
import json
import os
from pathlib import Path

import pytest

from app.translation.tokens import count_input_tokens, text_tokens

try:
    import bpe_openai
except ImportError:  # pragma: no cover - a dev dependency (requirements-dev.txt)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise
    pytest.skip("bpe-openai is not installed (pip install -r requirements-dev.txt)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = sorted((ROOT / "tests" / "fixtures").glob("*/messages-*.json"))
ENCODINGS = ("o200k_base", "cl100k_base")


def _compact(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def reference_pieces(body: dict) -> list[str]:
    out: list[str] = []

    def content(c):
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list):
            for b in c:
                kind = b.get("type")
                if kind == "text":
                    out.append(b["text"])
                elif kind == "tool_use":
                    out.extend([b["name"], _compact(b.get("input"))])
                elif kind == "tool_result":
                    content(b.get("content"))
                elif kind == "document" and (b.get("source") or {}).get("type") == "text":
                    out.append(b["source"]["data"])

    content(body.get("system"))
    for m in body["messages"]:
        content(m.get("content"))
    for t in body.get("tools") or ():
        out.extend(v for v in (t.get("name"), t.get("description")) if isinstance(v, str))
        if isinstance(t.get("input_schema"), dict):
            out.append(_compact(t["input_schema"]))
    return out


def exact(body: dict, encoding: str) -> int:
    enc = bpe_openai.get_encoding(encoding)
    return sum(len(enc.encode(p)) for p in reference_pieces(body)) + 3 * len(body["messages"])


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_claude_code_bodies_within_ten_percent(path, encoding):
    body = json.loads(path.read_text())
    real = exact(body, encoding)
    estimate = count_input_tokens(body)
    assert abs(estimate - real) / real < 0.10, (path.name, encoding, estimate, real)


@pytest.mark.parametrize("name, text", [
    ("python source", "".join(open(f).read() for f in sorted(glob.glob(str(ROOT / "app" / "**" / "*.py"),
                                                                       recursive=True)))[:60000]),
    ("Read output", "".join(f"{i + 1:6d}\t{line}\n" for i, line in enumerate(
        (ROOT / "app" / "translation" / "request.py").read_text().splitlines()))),
    ("markdown", (ROOT / "docs" / "translation.md").read_text()),
    ("shell listing", "-rw-r--r-- 1 root root 82195 Dec  1 21:08 messages-turn1.json\n" * 40),
    ("German", "Die Übersetzung funktioniert für die einfachen Fälle, aber nicht für alle. " * 30),
    ("Chinese", "在每一轮对话过程中,模型会输出思维链内容和最终回答。" * 30),
])
def test_other_kinds_of_text_stay_close(name, text):
    """Not only the fixtures: code, numbered file reads, prose, digits and non-Latin scripts."""
    real = len(bpe_openai.get_encoding("o200k_base").encode(text))
    assert abs(text_tokens(text) - real) / real < 0.15, (name, text_tokens(text), real)
