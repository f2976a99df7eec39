"""The node's HTTP listener (`[http] listen`, `vigil up --http`): `/metrics` and `/healthz`.

Modules: `app` (HttpApp: a plain ASGI 3 app routing by a (method, path) table, to which the API
adds its routes), `metrics` (RunMetrics: the process's counters and histograms, fed by the
intents the node's store commits; the gauges read at scrape time), `node_routes` (what `/metrics`
and `/healthz` read of the node and its store), `serve` (HttpListener: bind at start, serve with
uvicorn in the node's event loop). prometheus_client and uvicorn are imported only by these
modules, which only `vigil up` with a listener loads.

Layer: http, above api, below cli. May import every lower layer.
"""
