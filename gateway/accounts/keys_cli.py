"""``electron-keys``: create, list, disable, enable and delete API keys; set account limits.

Works on the store the gateway uses (``ELECTRON_DATA_DIR``'s SQLite file, or
``ELECTRON_DATABASE_URL``); running gateways pick changes up within
``ELECTRON_ACCOUNTS_REFRESH_S`` (2 s), without a restart.

    electron-keys create --account acme --name prod [--admin]   # the key alone on the last line
    electron-keys list
    electron-keys disable sk-el-AbC123 | enable ... | delete ...
    electron-keys limits --account acme --concurrency 10 --rpm 600 [--tpm 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime, timezone

from gateway.accounts.store import AccountStore, StoreError
from gateway.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="electron-keys", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key; prints it once, alone on the last line")
    create.add_argument("--account", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--admin", action="store_true", help="may read the usage and costs endpoints")
    commands.add_parser("list", help="every key: prefix, id, account, name, state")
    for name in ("disable", "enable", "delete"):
        command = commands.add_parser(name, help=f"{name} a key")
        command.add_argument("key", metavar="KEY_PREFIX", help="the prefix `list` shows, or the key id")
    limits = commands.add_parser("limits", help="set an account's caps (unset ones keep their value)")
    limits.add_argument("--account", required=True)
    limits.add_argument("--concurrency", type=int)
    limits.add_argument("--rpm", type=int)
    limits.add_argument("--tpm", type=int, help="tokens per minute; 0: no cap")
    return parser


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    store = await AccountStore.open(settings.store_url)
    try:
        if args.command == "create":
            made = await store.create_key(args.account, args.name, admin=args.admin)
            print(f"Created key {made.key_id} ({made.prefix}...) for account {args.account}"
                  f"{' with admin rights' if args.admin else ''}. It is shown only now; store it safely:")
            print(made.key)
        elif args.command == "list":
            keys = await store.keys()
            print(f"{'prefix':14} {'id':22} {'account':16} {'name':20} {'admin':6} {'state':9} created (UTC)")
            for k in keys:
                print(f"{k.prefix:14} {k.key_id:22} {k.account_id:16} {k.name:20} {'yes' if k.admin else 'no':6} "
                      f"{'disabled' if k.disabled else 'enabled':9} {_when(k.created_at_ms)}")
        elif args.command in ("disable", "enable", "delete"):
            key = await store.find_key(args.key)
            if args.command == "delete":
                await store.delete_key(key.key_id)
            else:
                await store.set_disabled(key.key_id, args.command == "disable")
            print(f"{args.command}d {key.key_id} ({key.prefix}) of account {key.account_id}")
        elif args.command == "limits":
            for name in ("concurrency", "rpm", "tpm"):
                value = getattr(args, name)
                if value is not None and value < 0:
                    raise StoreError(f"--{name} must be >= 0")
            await store.set_limits(args.account, args.concurrency, args.rpm, args.tpm)
            c, r, t = await store.account_limits(args.account)
            d = settings
            print(f"account {args.account}: concurrency {c if c is not None else d.default_concurrency}, "
                  f"rpm {r if r is not None else d.default_rpm}, tpm {t if t is not None else d.default_tpm or 'none'}"
                  " (0: no cap)")
        return 0
    except StoreError as exc:
        print(f"electron-keys: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return asyncio.run(run(args, Settings.from_env()))


if __name__ == "__main__":
    sys.exit(main())
