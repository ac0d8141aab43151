"""A local input-token estimate for count_tokens (and message_start) in translation mode.

Rule: ceil(characters / 4) over the system prompt, every text-like piece of every message
(text, tool_use input as JSON, tool_result text, text documents) and each tool's name,
description and input_schema as JSON; plus 1,600 per image (Anthropic's cost of a ~1.15 MP image)
and 3 per message for role framing. Thinking blocks are not counted (translation drops them).
Never below 1. No tokenizer: upstream models differ anyway.
"""
from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 1600
MESSAGE_OVERHEAD = 3


def estimate_input_tokens(body: dict) -> int:
    chars = 0
    images = 0
    system = body.get("system")
    if system:
        c, n = _content(system)
        chars += c
        images += n
    messages = body.get("messages")
    count = 0
    if isinstance(messages, list):
        count = len(messages)
        for message in messages:
            if isinstance(message, dict):
                c, n = _content(message.get("content"))
                chars += c
                images += n
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict):
                for key in ("name", "description"):
                    value = tool.get(key)
                    if isinstance(value, str):
                        chars += len(value)
                schema = tool.get("input_schema")
                if isinstance(schema, dict):
                    chars += _json_size(schema)
    tokens = -(-chars // CHARS_PER_TOKEN) + images * IMAGE_TOKENS + count * MESSAGE_OVERHEAD
    return max(tokens, 1)


def _content(content: Any) -> tuple[int, int]:
    """(characters, images) of a content string or block list."""
    if isinstance(content, str):
        return len(content), 0
    if not isinstance(content, list):
        return 0, 0
    chars = images = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if isinstance(text, str):
                chars += len(text)
        elif kind == "image":
            images += 1
        elif kind == "tool_use":
            name = block.get("name")
            chars += (len(name) if isinstance(name, str) else 0) + _json_size(block.get("input"))
        elif kind == "tool_result":
            c, n = _content(block.get("content"))
            chars += c
            images += n
        elif kind == "document":
            source = block.get("source")
            if isinstance(source, dict):
                if isinstance(source.get("data"), str) and source.get("type") == "text":
                    chars += len(source["data"])
                elif source.get("type") == "content":
                    c, n = _content(source.get("content"))
                    chars += c
                    images += n
    return chars, images


def _json_size(value: Any) -> int:
    """About len(compact JSON) of a value; a walk is faster than json.dumps for this."""
    size = 0
    stack = [value]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is str:
            size += len(node) + 2
        elif kind is dict:
            size += 2
            for key, item in node.items():
                size += len(key) + 4  # quotes, colon, comma
                if type(item) is str:
                    size += len(item) + 2
                else:
                    stack.append(item)
        elif kind is list:
            size += 2 + len(node)
            stack.extend(node)
        else:
            size += 4  # numbers, booleans, null
    return size
