"""Storage selection: PostgreSQL when `DATABASE_URL` is set, else the embedded SQLite file."""
from __future__ import annotations

from app.storage.base import Storage, StorageError
from config.settings import Settings

__all__ = ["Storage", "StorageError", "open_storage", "is_postgres_url"]

# Pool size per worker process: the flusher, /token-stats readers and credential loads share it.
# Every request's accounting goes through the one flusher, so a few connections serve even a worker
# holding thousands of streams; the size grows a little with the worker's connection limit.
def pool_size(worker_connections: int) -> int:
    return max(2, min(10, worker_connections // 250))


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and url.split("://", 1)[0].lower() in ("postgresql", "postgres")


def open_storage(settings: Settings) -> Storage:
    """The storage the settings ask for. Nothing connects here: the first use connects and migrates."""
    url = settings.database_url
    retention = settings.usage_retention_rows
    if is_postgres_url(url):
        from app.storage.postgres import PostgresStorage

        return PostgresStorage(url, retention_rows=retention,
                               pool_max=pool_size(settings.worker_connections))
    from app.storage.sqlite import SqliteStorage

    return SqliteStorage(settings.usage_db_path, retention_rows=retention)
