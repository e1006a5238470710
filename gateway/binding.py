"""What a workflow binding confines: a token made with ``--workflow W`` sees and does nothing
of another workflow, whatever its role.

One rule for every read and every change, on the API and on the pages alike: wherever
something of one workflow is looked at or acted on (an action, an approval, an audit, a case
type's level, a promotion), ``confine`` is called with that workflow; lists are narrowed with
``confine_query``; what spans every workflow (the ledger's export, policy bundles) is confined
with workflow None, which no bound token reaches. A refusal is a 403 (Forbidden) that names the
token's binding and nothing of the other workflow; an id the caller sent is named back.

A binding only narrows: inside its workflow, the role rule (``gateway.api.access``) and the
bundle's Casbin lines decide as they do for a token bound to none.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.sql import ColumnElement, Select

from gateway.errors import Forbidden
from gateway.identity import Identity

__all__ = ["confine", "confine_query", "reaches"]

_Query = TypeVar("_Query", bound=Select[Any])


def reaches(identity: Identity, workflow: str | None) -> bool:
    """Whether the token's binding lets it see or act on something of ``workflow`` (None:
    something that spans every workflow). A token bound to none reaches everything."""
    return identity.workflow is None or identity.workflow == workflow


def confine(identity: Identity, workflow: str | None, what: str) -> None:
    """Refuse (Forbidden, 403) a bound token ``what`` (``"action act_…"``) when it is of
    another workflow, or spans every workflow (``workflow`` None)."""
    if reaches(identity, workflow):
        return
    where = "spans every workflow" if workflow is None else "is outside it"
    raise Forbidden(
        f"token {identity.name!r} is bound to workflow {identity.workflow!r}; {what} {where}"
    )


def confine_query(query: _Query, workflow: ColumnElement[Any], identity: Identity) -> _Query:
    """``query`` narrowed to the rows of the token's workflow (``workflow`` is the column that
    holds a row's); unchanged for a token bound to none."""
    return query if identity.workflow is None else query.where(workflow == identity.workflow)
