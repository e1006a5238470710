"""One table says which HTTP status each of the gateway's errors stands for, and the API, the
pages and the SDK all read it: the SDK turns every status back into the error it stands for."""

from __future__ import annotations

import httpx
import pytest

from gateway import errors
from gateway.client import transport as sdk


def test_every_gateway_error_has_its_status_in_the_one_table() -> None:
    kinds = {
        value
        for value in vars(errors).values()
        if isinstance(value, type)
        and issubclass(value, errors.GatewayError)
        and value is not errors.GatewayError
    }
    assert kinds == set(errors.STATUS)
    assert len(set(errors.STATUS.values())) == len(errors.STATUS)  # a status means one error
    assert errors.status_of(errors.DecisionUnavailable("ledger down")) == 503
    assert errors.status_of(ValueError("a bug")) == 500


@pytest.mark.parametrize(("kind", "status"), list(errors.STATUS.items()))
def test_the_sdk_raises_the_error_each_status_stands_for(
    kind: type[errors.GatewayError], status: int
) -> None:
    request = httpx.Request("GET", "http://gateway.test/v1/actions/act_1")
    response = httpx.Response(
        status,
        json={"type": "about:blank", "title": kind.title, "status": status, "detail": "why"},
        request=request,
    )
    raised = sdk.error_from(response)
    assert raised.kind is kind
    assert raised.status == status
    assert str(raised) == "why"
