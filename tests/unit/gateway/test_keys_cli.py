"""``electron-keys`` and ``electron-usage`` on a SQLite store: every command, and clear errors."""

import asyncio

import pytest

from gateway.accounts import keys_cli, usage_cli
from gateway.accounts.api_keys import hash_key
from gateway.accounts.store import AccountStore
from gateway.settings import Settings


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ELECTRON_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("ELECTRON_DATABASE_URL", raising=False)
    return Settings.from_env()


def keys(settings):
    async def read():
        store = await AccountStore.open(settings.store_url)
        try:
            return await store.keys()
        finally:
            await store.close()
    return asyncio.run(read())


def test_every_command(env, capsys):
    assert keys_cli.main(["create", "--account", "acme", "--name", "prod", "--admin"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    [record] = keys(env)
    assert record.hash == hash_key(key) and record.admin and record.name == "prod" and key not in str(record)

    assert keys_cli.main(["list"]) == 0
    listing = capsys.readouterr().out
    assert record.prefix in listing and key not in listing and "enabled" in listing

    assert keys_cli.main(["disable", record.prefix]) == 0
    assert keys(env)[0].disabled
    assert keys_cli.main(["enable", record.key_id]) == 0
    assert not keys(env)[0].disabled

    assert keys_cli.main(["limits", "--account", "acme", "--concurrency", "7", "--rpm", "70"]) == 0
    assert "concurrency 7, rpm 70" in capsys.readouterr().out
    assert keys_cli.main(["limits", "--account", "acme", "--tpm", "5000"]) == 0  # the others are kept
    assert (keys(env)[0].max_concurrency, keys(env)[0].rpm, keys(env)[0].tpm) == (7, 70, 5000)

    assert keys_cli.main(["delete", record.prefix]) == 0
    assert keys(env) == []


def test_unknown_short_and_ambiguous_prefixes_are_refused(env, capsys):
    for _ in range(2):
        keys_cli.main(["create", "--account", "acme", "--name", "k"])
    capsys.readouterr()
    assert keys_cli.main(["disable", "sk-el-zzzzzz"]) == 1
    assert "no key matches" in capsys.readouterr().err
    assert keys_cli.main(["disable", "sk-"]) == 1
    assert "at least 4" in capsys.readouterr().err
    assert keys_cli.main(["disable", "sk-el-"]) == 1
    assert "matches 2 keys" in capsys.readouterr().err
    assert keys_cli.main(["limits", "--account", "acme", "--rpm", "-1"]) == 1
    assert all(not k.disabled for k in keys(env))


def test_usage_report_on_an_empty_ledger(env, capsys):
    assert usage_cli.main(["--since", "2026-11-01"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["day", "account", "key"] and lines[-1].split()[:2] == ["total", "0"]
