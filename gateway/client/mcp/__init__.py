"""Mandate in front of MCP servers: ``mandate mcp proxy`` makes every tool call an agent makes
a proposal first (``gateway.client.mcp.proxy``), naming tools as action types by one reversible rule
(``gateway.client.mcp.naming``) and recording their arguments as the ledger can hold them
(``gateway.client.mcp.arguments``). The SDK side: nothing of the gateway's server is imported."""
