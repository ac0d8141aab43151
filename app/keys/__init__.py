"""Client keys: per-person keys with model rules, budgets and rate limits shared across workers and hosts.

keyformat.py   the key's shape and its SHA-256 hash (pure)
rules.py       a key's record, flag values, budget periods, model globs (pure)
limits.py      the admission arithmetic over one key's shared state (pure)
local.py       that state on one host: a SQLite file every worker shares
redis_state.py that state across hosts: Redis, one Lua script per step
store.py       the keys table in the usage store (SQLite or PostgreSQL)
service.py     what a request meets: identify, admit, finish; reloads keys and spend in the background
cli.py         `claude-nexus-proxy keys create|list|show|update|revoke`
"""
