"""The one compact JSON encoder: what the proxy writes to clients and upstreams.

`allow_nan=False`: NaN and Infinity are not JSON, so a value that would need them is an error to handle,
never bytes a client or an upstream cannot parse.
"""
from __future__ import annotations

import json

# Non-ASCII kept as UTF-8: the SSE events of a translated stream.
compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
# Non-ASCII escaped: ~3x faster on large bodies, and a lone surrogate shows as an escape.
compact_ascii = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
