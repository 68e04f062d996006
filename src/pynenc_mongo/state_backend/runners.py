"""Runner contexts: the ``runner_contexts`` collection, one document per runner.

A context names its parent by id; reading one rebuilds the chain of parents
(from pynenc's per-backend ``_runner_context_cache`` first, then MongoDB).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from pynenc_mongo import schema, values
from pynenc_mongo.schema import F_APP
from pynenc_mongo.state_backend.common import StorePart, check_str
from pynenc_mongo.store import MongoStore, check_document_size

if TYPE_CHECKING:
    from pynenc.runner.runner_context import RunnerContext

logger = logging.getLogger("pynenc_mongo")

#: Longest text of a runner-context search sent to the server as a pattern;
#: longer searches are narrowed on a slice and checked exactly here.
MAX_SEARCH_PATTERN_CHARS = 1000
#: Deepest runner-context parent chain followed (guards against loops).
MAX_RUNNER_DEPTH = 64
#: Most parent ids in one ``$in`` query.
PARENT_BATCH = 1000


class RunnerContexts(StorePart):
    """Runner contexts of one app.

    :param MongoStore store: the app's store.
    :param dict cache: pynenc's ``_runner_context_cache`` of the backend
        (``{runner_id: RunnerContext}``), consulted for parents before MongoDB.
    """

    def __init__(self, store: MongoStore, cache: dict[str, RunnerContext]) -> None:
        super().__init__(store)
        self.cache = cache

    def store_context(self, runner_context: RunnerContext) -> None:
        """Store a runner context (its parent is stored by pynenc's base class, by id).

        :raises TypeError: if its runner id is not a str.
        :raises pynenc_mongo.errors.MongoLimitError: if its document would pass 16 MiB.
        """
        runner_id = check_str("runner_id", runner_context.runner_id)
        doc = schema.runner_context_doc(self.app_id, runner_context)
        check_document_size(doc, f"runner context {runner_id[:80]!r}")
        self.store.upsert(
            self.store.collection(schema.RUNNER_CONTEXTS).update_one,
            {F_APP: self.app_id, "runner_id": runner_id},
            {"$set": doc},
            upsert=True,
        )

    def _load_parents(self, docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The stored documents of every parent the chains of ``docs`` name that is not
        in the cache: one ``$in`` query per chain level (at most
        :data:`MAX_RUNNER_DEPTH` levels), not one ``find_one`` per runner.

        :return: ``{runner_id: document}`` (``docs`` included).
        """
        known: dict[str, dict[str, Any]] = {
            d["runner_id"]: d for d in docs if isinstance(d.get("runner_id"), str)
        }
        frontier = {d.get("parent_runner_id") for d in docs}
        for _ in range(MAX_RUNNER_DEPTH):
            wanted = sorted(
                p
                for p in frontier
                if isinstance(p, str) and p and p not in known and p not in self.cache
            )
            if not wanted:
                break
            found: list[dict[str, Any]] = []
            for start in range(0, len(wanted), PARENT_BATCH):
                found.extend(
                    self.store.find_all(
                        self.store.collection(schema.RUNNER_CONTEXTS),
                        {
                            F_APP: self.app_id,
                            "runner_id": {"$in": wanted[start : start + PARENT_BATCH]},
                        },
                        {"_id": 0},
                    )
                )
            for doc in found:
                known[doc["runner_id"]] = doc
            frontier = {doc.get("parent_runner_id") for doc in found}
        return known

    def _contexts_from(self, docs: list[dict[str, Any]]) -> list[RunnerContext]:
        """Build each document's ``RunnerContext`` with its chain of parents; parents
        are loaded in batches (:meth:`_load_parents`) and kept in the cache."""
        known = self._load_parents(docs)
        parent_ids = {d.get("parent_runner_id") for d in known.values()}
        built: dict[str, RunnerContext] = {}
        contexts = [self._context_from(doc, known, built) for doc in docs]
        for runner_id, context in built.items():
            if runner_id in parent_ids:
                self.cache[runner_id] = context
        return contexts

    def _context_from(
        self,
        doc: dict[str, Any],
        known: dict[str, dict[str, Any]],
        built: dict[str, RunnerContext],
        seen: frozenset[str] = frozenset(),
    ) -> RunnerContext:
        """Build a ``RunnerContext`` with its chain of parents (from the cache,
        ``built`` or ``known``).

        A parent that is not stored, or a chain that loops back or is deeper
        than :data:`MAX_RUNNER_DEPTH`, ends the chain (logged as a warning).
        """
        from pynenc.runner.runner_context import RunnerContext

        parent = None
        parent_id = doc.get("parent_runner_id")
        runner_id = doc["runner_id"]
        if parent_id:
            chain = seen | {runner_id}
            if parent_id in chain or len(chain) >= MAX_RUNNER_DEPTH:
                logger.warning(
                    "runner context %s: parent chain loops or is too deep at %s; cut there",
                    str(runner_id)[:200],
                    str(parent_id)[:200],
                )
            else:
                parent = self.cache.get(parent_id) or built.get(parent_id)
                if parent is None:
                    parent_doc = known.get(parent_id)
                    if parent_doc is None:
                        logger.warning(
                            "runner context %s names parent %s, which is not stored",
                            str(runner_id)[:200],
                            str(parent_id)[:200],
                        )
                    else:
                        parent = self._context_from(parent_doc, known, built, chain)
        context = RunnerContext(
            runner_cls=doc["runner_cls"],
            runner_id=runner_id,
            parent_ctx=parent,
            pid=doc["pid"],
            hostname=doc["hostname"],
            thread_id=doc["thread_id"],
        )
        built.setdefault(runner_id, context)
        return context

    def get(self, runner_id: str) -> RunnerContext | None:
        """The stored runner context, or None. :raises TypeError: for a non-str id."""
        doc = self.store.retry(
            self.store.collection(schema.RUNNER_CONTEXTS).find_one,
            {F_APP: self.app_id, "runner_id": check_str("runner_id", runner_id)},
            {"_id": 0},
        )
        return self._contexts_from([doc])[0] if doc else None

    def get_many(self, runner_ids: list[str]) -> list[RunnerContext]:
        """The stored runner contexts among ``runner_ids`` (missing ones are skipped)."""
        if not runner_ids:
            return []
        ids = [check_str("runner_id", runner_id) for runner_id in runner_ids]
        docs = self.store.find_all(
            self.store.collection(schema.RUNNER_CONTEXTS),
            {F_APP: self.app_id, "runner_id": {"$in": ids}},
            {"_id": 0},
        )
        return self._contexts_from(docs)

    def matching(self, partial_id: str) -> list[RunnerContext]:
        """Runner contexts whose runner id contains ``partial_id`` literally.

        A literal substring match: ``.``, ``(``, ``*``, ``\\`` and every other
        character match themselves. The server gets an escaped (``re.escape``)
        pattern, which has no quantifier or group to backtrack on; since MongoDB
        refuses patterns with NUL and very long ones, it gets at most
        :data:`MAX_SEARCH_PATTERN_CHARS` characters of the longest NUL-free part,
        and every candidate is then checked exactly here.

        :param str partial_id: any string (``""`` matches every runner).
        :return: the matching contexts.
        :raises TypeError: if ``partial_id`` is not a string.
        """
        check_str("partial_id", partial_id)
        probe = max(partial_id.split("\x00"), key=len)[:MAX_SEARCH_PATTERN_CHARS]
        filter_: dict[str, Any] = {F_APP: self.app_id}
        if probe and values.is_bson_string(probe):
            filter_["runner_id"] = {"$regex": re.escape(probe)}
        docs = self.store.find_all(
            self.store.collection(schema.RUNNER_CONTEXTS), filter_, {"_id": 0}
        )
        return self._contexts_from(
            [
                doc
                for doc in docs
                if isinstance(doc.get("runner_id"), str) and partial_id in doc["runner_id"]
            ]
        )


__all__ = ["MAX_RUNNER_DEPTH", "MAX_SEARCH_PATTERN_CHARS", "RunnerContexts"]
