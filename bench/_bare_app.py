"""The baseline of ``gateway_http``: a bare FastAPI endpoint that validates the gateway's
``Proposal`` model and returns it, served exactly as ``mandate serve`` serves the gateway
(``uvicorn.run``: uvloop, httptools, one worker, log level warning).

``python -m bench._bare_app --port P``
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI

from gateway.schemas import Proposal

app = FastAPI(title="bare")


@app.post("/v1/actions")
async def propose(proposal: Proposal) -> Proposal:
    """Validate the proposal and send it back."""
    return proposal


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    """Ready (for the bench's start-up wait; not measured)."""
    return {"status": "ok"}


def main() -> None:
    """Serve on loopback until stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
    )


if __name__ == "__main__":
    main()
