"""SCRAM authentication over the wire: the wire test server started with a user
(``scripts/wire_server --user NAME:PASSWORD``, mongoeco's ``WireAuthUser``)."""

from __future__ import annotations

import uuid
from collections.abc import Generator
from typing import Any

import pymongo
import pytest
from wire_support import WireServer, WireServerUnavailable, start_wire_server

from pynenc_mongo import schema
from pynenc_mongo.errors import MongoAuthenticationError

pytestmark = pytest.mark.wire

USER = "pynenc-app"
PASSWORD = "S3cret-Wire-Pass"
WRONG = "Not-The-Pass-42"


@pytest.fixture(scope="module")
def auth_server() -> Generator[WireServer, None, None]:
    """A wire server of this module's own that requires SCRAM authentication."""
    try:
        server = start_wire_server("--user", f"{USER}:{PASSWORD}")
    except WireServerUnavailable as exc:
        pytest.skip(f"wire test server unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


def _app(url: str, database: str) -> Any:
    from pynenc import PynencBuilder

    return (
        PynencBuilder()
        .app_id(f"auth-{uuid.uuid4().hex[:6]}")
        .memory()
        .mongo(url=url, database=database, outage_tolerance_seconds=5)
        .build()
    )


def test_a_wrong_password_is_refused_naming_the_host_not_the_password(
    auth_server: WireServer,
) -> None:
    assert PASSWORD in auth_server.url
    wrong_url = auth_server.url.replace(PASSWORD, WRONG)
    app = _app(wrong_url, f"auth_{uuid.uuid4().hex[:6]}")
    with pytest.raises(MongoAuthenticationError) as info:
        app.state_backend._set_result("inv", '"x"')
    message = str(info.value)
    host = auth_server.url.split("@")[1].split("/")[0]
    assert host in message and "refused the credentials" in message, message
    assert WRONG not in message and PASSWORD not in message
    assert WRONG not in repr(app.state_backend)


def test_the_right_password_works_and_the_app_info_holds_no_password(
    auth_server: WireServer,
) -> None:
    database = f"auth_{uuid.uuid4().hex[:6]}"
    app = _app(auth_server.url, database)
    backend: Any = app.state_backend
    backend._set_result("inv", '"ok"')
    assert backend._get_result("inv") == '"ok"'
    info = backend.get_app_info()
    assert info.app_id == app.app_id
    raw: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(auth_server.url)
    try:
        docs = list(raw[database][backend.collection_name(schema.APP_INFOS)].find())
        assert docs, "no app info stored"
        assert PASSWORD not in str(docs)
    finally:
        raw.drop_database(database)
        raw.close()
    assert PASSWORD not in repr(backend) and PASSWORD not in backend.describe_target()
