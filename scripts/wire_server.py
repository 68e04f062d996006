"""A local MongoDB wire-protocol test server: mongoeco's in-memory engine on 127.0.0.1.

Run through ``scripts/wire_server`` (which finds a Python >= 3.13 and prepares its own
virtual environment); not MongoDB, but real PyMongo clients (``MongoClient``,
``AsyncMongoClient``) connect to it over TCP from any number of processes.

Prints one line, the connection URL (``mongodb://127.0.0.1:PORT/?directConnection=true``,
with ``user:password@`` when ``--user`` is given), then serves until SIGTERM or SIGINT.
With ``--url-file PATH`` the URL is also written to PATH once the server listens.

One change to the emulator (a test launcher's fix, see
``shared/reference/wire-test-server.md``): its memory engine checks the ``_id``
uniqueness of every single-document write by scanning the whole collection, so writes
slow down as a collection grows (a 1,000-document ``insert_many`` took 10 s). The scan
is needed only for numeric ``_id`` values (5 and 5.0 are one key in MongoDB but two
storage keys here), and the engine already scans for those on its own; every other
``_id`` is decided by its storage key. So the launcher turns the unconditional scan off.
``tests/test_wire_server.py`` shows duplicates are still refused (string, ObjectId, and
5 vs 5.0).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any


def _narrow_id_scan() -> None:
    """Scan for duplicate ``_id`` values only where the storage key cannot decide."""
    from mongoeco.engines.memory import MemoryEngine

    original = MemoryEngine._ensure_unique_indexes

    def ensure_unique_indexes(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["scan_payload_id"] = False  # numeric ids are still scanned by the engine
        return original(self, *args, **kwargs)

    MemoryEngine._ensure_unique_indexes = ensure_unique_indexes  # type: ignore[method-assign]


async def _serve(host: str, port: int, users: list[tuple[str, str]], url_file: str) -> None:
    from mongoeco.wire import AsyncMongoEcoProxyServer, WireAuthUser

    auth_users = tuple(
        WireAuthUser(
            username=name,
            password=password,
            source="admin",
            mechanisms=("SCRAM-SHA-256",),
            roles=({"role": "root", "db": "admin"},),
        )
        for name, password in users
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncMongoEcoProxyServer(host=host, port=port, auth_users=auth_users) as server:
        address = server.address
        url = address.uri
        if users:
            name, password = users[0]
            from urllib.parse import quote

            url = url.replace(
                "mongodb://", f"mongodb://{quote(name, safe='')}:{quote(password, safe='')}@", 1
            # authMechanism: PyMongo negotiates the mechanism from the server's
            # ``saslSupportedMechs`` reply and falls back to SCRAM-SHA-1, which the
            # emulator's SCRAM-SHA-1 refuses; SCRAM-SHA-256 (MongoDB's default) works.
            ).replace("/?", "/?authSource=admin&authMechanism=SCRAM-SHA-256&", 1)
        print(url, flush=True)
        if url_file:
            Path(url_file).write_text(url + "\n", encoding="utf-8")
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: a free one)")
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="require SCRAM authentication with this user (repeatable)",
    )
    parser.add_argument("--url-file", default="", help="also write the URL to this file")
    args = parser.parse_args(argv)
    users = []
    for spec in args.user:
        name, sep, password = spec.partition(":")
        if not sep or not name:
            parser.error(f"--user: expected NAME:PASSWORD, got {spec.split(':')[0]!r}:***")
        users.append((name, password))
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error(f"--host: a test server listens on loopback only, got {args.host!r}")
    _narrow_id_scan()
    try:
        asyncio.run(_serve(args.host, args.port, users, args.url_file))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
