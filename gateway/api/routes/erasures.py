"""Erasure over HTTP: a data subject's personal data erased from the ledger (governors)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from gateway.api.deps import AUTH_PROBLEMS, Caller, Rt, problem_doc
from gateway.api.strict_json import StrictJSONRoute
from gateway.binding import confine
from gateway.decision.erasure import erase_subject
from gateway.schemas import ErasureRequest, ErasureView

router = APIRouter(tags=["erasures"], route_class=StrictJSONRoute, responses=AUTH_PROBLEMS)


@router.post(
    "/v1/erasures",
    response_model=ErasureView,
    summary="Erase a data subject's personal data (GDPR art. 17; governors)",
    responses={
        403: problem_doc("Not a governor, or a token bound to a workflow (an erasure spans all)."),
        422: problem_doc("A field is wrong, or the reason names the subject; `errors` says which."),
        503: problem_doc("The ledger cannot erase now (its subject key, its database)."),
    },
)
async def erase(request: ErasureRequest, runtime: Rt, identity: Caller) -> ErasureView:
    """Every value the ledger sealed for the data subject (the fields the bundle's
    `personal_data` names, in every workflow) is erased, and an `erasure` entry lists them,
    naming the subject only by its keyed digest. The export still verifies; the action's view
    and pages show the fields as erased, and an action not yet carried out is not: its webhook
    never receives an erased value. Nothing left to erase: `erasure_seq` is null."""
    confine(identity, None, "an erasure")
    return await asyncio.to_thread(
        erase_subject,
        runtime.ledger,
        request.data_subject,
        actor=identity.name,
        reason=request.reason,
    )
