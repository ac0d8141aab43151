"""The keys table (`nexus_keys`) in the usage store, SQLite or PostgreSQL: hashes and limits, never a key.

The CLI writes it and every server reads it; spend per key is summed from the per-request rows.
"""
from __future__ import annotations

import json
import time
from typing import Sequence

from ..storage.where import time_range
from .keyformat import generate_key, hash_key, new_key_id
from .rules import ClientKey

_COLUMNS = ("id", "key_hash", "last4", "name", "team", "models", "rpm", "tpm", "concurrency", "budget_usd",
            "budget_period", "expires_at", "domain", "created_at", "updated_at", "revoked_at")
# The fields `keys update` may change.
EDITABLE = ("name", "team", "models", "rpm", "tpm", "concurrency", "budget_usd", "budget_period", "expires_at",
            "domain")


def _row_to_key(row: Sequence) -> ClientKey:
    d = dict(zip(_COLUMNS, row))
    models = tuple(json.loads(d["models"])) if d["models"] else ()
    return ClientKey(
        id=d["id"], name=d["name"], key_hash=d["key_hash"], last4=d["last4"], team=d["team"], models=models,
        rpm=d["rpm"], tpm=d["tpm"], concurrency=d["concurrency"],
        budget_usd=float(d["budget_usd"]) if d["budget_usd"] is not None else None,
        budget_period=d["budget_period"], expires_at=d["expires_at"], domain=d["domain"],
        created_at=float(d["created_at"]), updated_at=float(d["updated_at"]), revoked_at=d["revoked_at"],
    )


def _value(field: str, value):
    if field == "models":
        return json.dumps(list(value)) if value else None
    return value


class KeyStore:
    def __init__(self, storage, clock=time.time) -> None:
        self.storage = storage
        self.ph = storage.placeholder
        self.clock = clock

    def create(self, name: str, **fields) -> tuple[str, ClientKey]:
        """A new key: (the key, shown once; its record)."""
        key = generate_key()
        now = self.clock()
        record = ClientKey(id=new_key_id(), name=name, key_hash=hash_key(key), last4=key[-4:],
                           created_at=now, updated_at=now, **fields)
        values = [_value(c, getattr(record, c)) for c in _COLUMNS]
        marks = ", ".join(self.ph for _ in _COLUMNS)
        self.storage.execute(f"INSERT INTO nexus_keys ({', '.join(_COLUMNS)}) VALUES ({marks})", values)
        return key, record

    def all(self) -> list[ClientKey]:
        rows = self.storage.query(f"SELECT {', '.join(_COLUMNS)} FROM nexus_keys ORDER BY created_at, id")
        return [_row_to_key(r) for r in rows]

    def get(self, key_id: str) -> ClientKey | None:
        rows = self.storage.query(f"SELECT {', '.join(_COLUMNS)} FROM nexus_keys WHERE id = {self.ph}", (key_id,))
        return _row_to_key(rows[0]) if rows else None

    def update(self, key_id: str, changes: dict) -> ClientKey | None:
        changes = {k: v for k, v in changes.items() if k in EDITABLE}
        if changes:
            sets = ", ".join(f"{k} = {self.ph}" for k in changes)
            params = [_value(k, v) for k, v in changes.items()] + [self.clock(), key_id]
            n = self.storage.execute(f"UPDATE nexus_keys SET {sets}, updated_at = {self.ph} WHERE id = {self.ph}",
                                     params)
            if not n:
                return None
        return self.get(key_id)

    def revoke(self, key_id: str) -> ClientKey | None:
        now = self.clock()
        self.storage.execute(f"UPDATE nexus_keys SET revoked_at = COALESCE(revoked_at, {self.ph}),"
                             f" updated_at = {self.ph} WHERE id = {self.ph}", (now, now, key_id))
        return self.get(key_id)

    # --- spend, from the per-request rows' cost --------------------------------------------------

    def spend(self, key_ids: Sequence[str], since: float, until: float | None = None) -> dict[str, float]:
        """Dollars spent per key from `since` (epoch seconds), summed from the rows' `cost_usd`."""
        if not key_ids:
            return {}
        marks = ", ".join(self.ph for _ in key_ids)
        sql = (f"SELECT key_id, COALESCE(SUM(cost_usd), 0) FROM nexus_requests"
               f" WHERE key_id IN ({marks}) AND ts >= {self.ph}")
        params: list = [*key_ids, float(since)]
        if until is not None:
            sql += f" AND ts < {self.ph}"
            params.append(float(until))
        rows = self.storage.query(sql + " GROUP BY key_id", params)
        out = {k: 0.0 for k in key_ids}
        out.update({r[0]: float(r[1] or 0) for r in rows})
        return out

    def usage_by_key(self, since: float | None = None, until: float | None = None) -> list[dict]:
        """/token-stats?group_by=key: usage and cost per key, with its name and team."""
        where, params = time_range(self.ph, since, until)
        sql = ("SELECT key_id, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_creation_input_tokens),"
               " SUM(cache_read_input_tokens), SUM(CASE WHEN error_type IS NOT NULL OR status >= 400 THEN 1 ELSE 0 END),"
               " COALESCE(SUM(cost_usd), 0), SUM(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END) FROM nexus_requests"
               + (" WHERE " + " AND ".join(where) if where else "") + " GROUP BY key_id")
        rows = self.storage.query(sql, params)
        keys = {k.id: k for k in self.all()}
        out = []
        for key_id, count, inp, outp, cc, cr, errors, cost, unpriced in rows:
            key = keys.get(key_id)
            out.append({
                "keyId": key_id, "name": key.name if key else None, "team": key.team if key else None,
                "requestCount": int(count or 0), "inputTokens": int(inp or 0), "outputTokens": int(outp or 0),
                "cacheCreationInputTokens": int(cc or 0), "cacheReadInputTokens": int(cr or 0),
                "errorCount": int(errors or 0), "costUsd": round(float(cost or 0), 6),
                "unpricedRequests": int(unpriced or 0),
            })
        out.sort(key=lambda e: (e["name"] is None, e["name"] or "", e["keyId"] or ""))
        return out
