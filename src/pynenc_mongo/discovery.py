"""``discover_app_infos``: find the apps stored where the default configuration points."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pynenc_mongo import schema
from pynenc_mongo.client import get_database
from pynenc_mongo.config import ConfigStateBackendMongo, describe, effective_database
from pynenc_mongo.errors import translate
from pynenc_mongo.operations import find_all

if TYPE_CHECKING:
    from pynenc.app_info import AppInfo


class NoMongoConfiguredError(ValueError):
    """No MongoDB URL in the default configuration (env vars, config file, pyproject)."""


def discover_app_infos() -> dict[str, AppInfo]:
    """Every app info stored in the database of the default configuration.

    :return: ``{app_id: AppInfo}`` (empty when the database holds none).
    :raises NoMongoConfiguredError: (a ``ValueError``) when ``mongo_url`` is not set
        by ``PYNENC__MONGO_URL``, ``PYNENC__CONFIGSTATEBACKENDMONGO__MONGO_URL``,
        the ``PYNENC__FILEPATH`` file or ``[tool.pynenc]``.
    :raises pynenc_mongo.errors.MongoUnavailableError: server unreachable.
    """
    conf = ConfigStateBackendMongo()
    if conf.field_info("mongo_url").source == "default":
        raise NoMongoConfiguredError(
            "pynenc-mongo: no MongoDB configured for app discovery. Set PYNENC__MONGO_URL "
            "(or mongo_url in the file named by PYNENC__FILEPATH, or in [tool.pynenc] of "
            "./pyproject.toml)."
        )
    db = get_database(
        conf.mongo_url, effective_database(conf), conf.mongo_server_selection_timeout_seconds
    )
    collection = db[schema.CollectionNames(conf.mongo_collection_prefix)[schema.APP_INFOS]]
    try:
        # Sorted by app_id: the unique ``app`` index serves it (no collection scan).
        docs = find_all(collection, {}, sort=[(schema.F_APP, 1)])
    except Exception as exc:
        mapped = translate(exc, describe(conf))
        if mapped is exc:
            raise
        raise mapped from None
    return {doc[schema.F_APP]: schema.app_info_from(doc) for doc in docs}
