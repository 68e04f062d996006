"""pynenc-mongo: the MongoDB state backend for pynenc.

Importing this package defines :class:`MongoStateBackend`, so pynenc's
component lookup (by class name) finds it; pynenc imports it automatically
through the ``pynenc.plugins`` entry point.
"""

from pynenc_mongo.broker import ConfigBrokerMongo, MongoBroker
from pynenc_mongo.client_data_store import ConfigClientDataStoreMongo, MongoClientDataStore
from pynenc_mongo.config import ConfigMongo, ConfigStateBackendMongo, MongoConfigError
from pynenc_mongo.errors import (
    AsyncOperationError,
    MongoAuthenticationError,
    MongoBackendError,
    MongoUnavailableError,
)
from pynenc_mongo.orchestrator import MongoBlockingControl, MongoOrchestrator
from pynenc_mongo.state_backend import MongoStateBackend
from pynenc_mongo.trigger import ConfigTriggerMongo, MongoTrigger
from pynenc_mongo.urls import MongoUrlError

__all__ = [
    "AsyncOperationError",
    "ConfigBrokerMongo",
    "ConfigClientDataStoreMongo",
    "ConfigMongo",
    "ConfigStateBackendMongo",
    "ConfigTriggerMongo",
    "MongoAuthenticationError",
    "MongoBackendError",
    "MongoBlockingControl",
    "MongoBroker",
    "MongoClientDataStore",
    "MongoConfigError",
    "MongoOrchestrator",
    "MongoStateBackend",
    "MongoTrigger",
    "MongoUnavailableError",
    "MongoUrlError",
]
__version__ = "0.4.0"
