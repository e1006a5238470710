"""Workflows over HTTP: what a workflow of the active bundle takes, for those who work in it.

An executor (and the MCP proxy, which proposes with an executor's token) learns here which
action types it may propose and what each needs, without reading the whole bundle, which is
closed to executors (``GET /v1/policies/active``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from gateway.api.deps import AUTH_PROBLEMS, Caller, Rt, problem_doc
from gateway.api.strict_json import StrictJSONRoute
from gateway.binding import confine
from gateway.errors import DecisionUnavailable, Forbidden, NotFound
from gateway.identity import Identity
from gateway.policy.active import ActivePolicy
from gateway.schemas import WorkflowActionType, WorkflowView

router = APIRouter(
    prefix="/v1/workflows",
    tags=["workflows"],
    route_class=StrictJSONRoute,
    responses=AUTH_PROBLEMS | {422: problem_doc("A parameter is wrong; `errors` names it.")},
)

Workflow = Annotated[
    str, Path(pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="The workflow, e.g. files.")
]
_ACTS = ("propose", "approve", "govern", "audit")  # what a Casbin role may do in a workflow


@router.get(
    "/{workflow}",
    response_model=WorkflowView,
    summary="A workflow's action types, and which of them the caller may propose",
    responses={
        403: problem_doc(
            "The caller's role has no part in this workflow (Casbin), or its token is bound to "
            "another one."
        ),
        404: problem_doc("No such workflow in the active bundle."),
        503: problem_doc("This process cannot read the active bundle right now."),
    },
)
def show(workflow: Workflow, runtime: Rt, identity: Caller) -> WorkflowView:
    """Open to every role that has a part in the workflow by the bundle's Casbin lines (an
    executor that may propose something there, its approvers, governors and auditors) and to
    policy admins; a token bound to another workflow is refused."""
    confine(identity, workflow, f"workflow {workflow}")
    in_force = runtime.in_force
    if in_force.unavailable is not None:
        raise DecisionUnavailable(in_force.unavailable)
    policy = in_force.policy
    config = policy.bundle.workflows.get(workflow)
    if config is None:
        raise NotFound(f"no workflow {workflow} in the active bundle")
    try:
        may_propose = {
            action_type: _allowed(policy, identity, workflow, action_type, "propose")
            for action_type in config.action_types
        }
        takes_part = identity.role == "policy-admin" or any(
            _allowed(policy, identity, workflow, action_type, act)
            for act in _ACTS
            for action_type in config.action_types
        )
    except Exception as exc:
        raise DecisionUnavailable(f"Casbin failed: {exc}", cause="casbin") from exc
    if not takes_part:
        raise Forbidden(f"role {identity.role!r} has no part in workflow {workflow!r}")
    described = policy.bundle.data["workflows"][workflow].get("description")
    return WorkflowView(
        workflow=workflow,
        description=described if isinstance(described, str) else None,
        role=identity.role,
        bundle_digest=policy.bundle.digest,
        action_types=[
            WorkflowActionType(
                action_type=action_type,
                case_types=list(case_types),
                may_propose=may_propose[action_type],
                resource_argument=config.resource_arguments.get(action_type),
            )
            for action_type, case_types in sorted(config.action_types.items())
        ],
    )


def _allowed(
    policy: ActivePolicy, identity: Identity, workflow: str, action_type: str, act: str
) -> bool:
    return policy.permitter.permit(identity.role, workflow, action_type, act).allowed
