"""Where the thinking signing key comes from: the setting, the shared PostgreSQL store, or the data dir."""
import os
import stat

import pytest

from app.services.thinking_key import FILE_NAME, STORE_KEY, ThinkingKey
from app.translation.thinking import sign, verify
from config.settings import Settings


def test_setting_wins_and_is_stable(tmp_path):
    settings = Settings(thinking_signing_key="a-long-enough-secret-value", usage_db_path=str(tmp_path / "u.db"))
    a, b = ThinkingKey(settings).get(), ThinkingKey(settings).get()
    assert a == b and len(a) == 32
    assert not (tmp_path / FILE_NAME).exists()
    other = ThinkingKey(Settings(thinking_signing_key="another-long-secret-value")).get()
    assert other != a


def test_file_key_is_created_once_and_shared_by_processes(tmp_path):
    settings = Settings(usage_db_path=str(tmp_path / "data" / "usage.sqlite3"))
    first = ThinkingKey(settings)
    second = ThinkingKey(settings)  # another worker of the same host
    sig = sign("chat:x", first.get())
    assert verify(sig, second.get()) == "chat:x"
    path = tmp_path / "data" / FILE_NAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(path.read_text()) == 64


def test_unusable_data_dir_falls_back_to_a_process_key(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    keys = ThinkingKey(Settings(usage_db_path=str(blocker / "usage.sqlite3")))
    key = keys.get()
    assert key == keys.get() and len(key) == 32  # stable within the process, nothing raised


def test_setting_is_validated():
    from config.settings import SettingsError
    with pytest.raises(SettingsError, match="THINKING_SIGNING_KEY"):
        Settings.from_env({"THINKING_SIGNING_KEY": "short"})


def test_postgres_store_key_is_shared_by_hosts(pg_url):
    from app.storage.postgres import PostgresStorage

    one, two = PostgresStorage(pg_url), PostgresStorage(pg_url)
    try:
        one.migrate()
        settings = Settings(database_url=pg_url, usage_db_path="/nonexistent/dir/usage.sqlite3")
        a = ThinkingKey(settings, one).get()
        b = ThinkingKey(settings, two).get()
        assert a == b and len(a) == 32
        stored = one.load_credential(STORE_KEY)
        assert stored is not None and bytes.fromhex(stored[0]["key"]) == a
    finally:
        one.close()
        two.close()


def test_in_memory_store_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key = ThinkingKey(Settings(usage_db_path=":memory:")).get()
    assert len(key) == 32 and not list(tmp_path.iterdir())
