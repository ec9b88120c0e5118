"""mlflow-gate: an authenticating, authorizing reverse proxy in front of an unmodified mlflow server.

The modules, in the order a request meets them:

    app.py        the ASGI entry: /_gate/ pages to Starlette, everything else to gate.py
    authn.py      credential chain: session cookie, personal token, basic, (provider JWT)
    gate.py       one MLflow request: parse, resolve, decide, rewrite, forward, filter
    routes.py     the MLflow route table as data
    params.py     request parameters read exactly as MLflow reads them
    otlp.py       OTLP trace exports (protobuf / JSON, compressed) read as MLflow reads them, bounded
    resources.py  ids -> experiment / model names through the upstream, cached
    decide.py     the pure decision with its reason
    rewrite.py    forced artifact location, the caller as creator (mlflow.user), team tags
    filters.py    search results cut to what the caller may read, pages refilled
    graphql.py    GraphQL documents coerced as MLflow executes them, authorized per root field
    forward.py    streaming aiohttp forwarding with header hygiene
    errors.py     the exception family and its one renderer
    audit.py      one JSON line per decision
"""
__version__ = "0.1.0"
