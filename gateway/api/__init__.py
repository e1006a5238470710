"""The HTTP API's edge: routes, dependencies, access, problems, middleware."""
