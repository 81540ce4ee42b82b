"""The shadow operations as store jobs: read the record, apply the document semantics, write.

They run on the store's writer thread (the gateway) or on the caller's thread (the CLI when
no gateway runs), so both give the same answers and versions.
"""

from __future__ import annotations

import time
from typing import Any

from .document import (
    CLASSIC,
    Limits,
    ShadowError,
    UpdateRequest,
    UpdateResult,
    apply_update,
    delete_document,
    get_document,
    list_document,
    not_found,
)
from .store import Txn


def _now() -> int:
    return int(time.time())


def get(txn: Txn, thing: str, name: str = CLASSIC,
        client_token: str | None = None) -> dict[str, Any]:
    now = _now()
    rec = txn.load(thing, name, now)
    if rec is None or rec.shadow is None:
        raise not_found(thing, name, client_token)
    return get_document(rec.shadow, now, client_token)


def update(txn: Txn, thing: str, name: str, request: UpdateRequest, limits: Limits,
           max_named_shadows: int | None = None) -> UpdateResult:
    now = _now()
    rec = txn.load(thing, name, now)
    current = rec.shadow if rec is not None else None
    base_version = rec.version if rec is not None else 0
    if name != CLASSIC and current is None and max_named_shadows is not None \
            and txn.count_named(thing) >= max_named_shadows:
        raise ShadowError(400, f"Too many named shadows for thing {thing}; maximum is "
                               f"{max_named_shadows}", request.client_token)
    result = apply_update(current, base_version, request, now, limits)
    txn.save(thing, name, result.shadow, now)
    return result


def delete(txn: Txn, thing: str, name: str = CLASSIC,
           client_token: str | None = None) -> dict[str, Any]:
    now = _now()
    rec = txn.load(thing, name, now)
    if rec is None or rec.shadow is None:
        raise not_found(thing, name, client_token)
    txn.delete(thing, name, rec.version, now)
    return delete_document(rec.version, now, client_token)


def list_named(txn: Txn, thing: str) -> dict[str, Any]:
    return list_document(txn.list_named(thing), _now())
