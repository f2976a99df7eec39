"""`vigil agent`: runs jobs for a remote scheduler under the same shim model, behind an HTTP API.

The agent keeps a small SQLite journal in its state directory, written *before* a job is launched,
so that a run it accepted is never lost and never started twice:

- a repeated dispatch of a run id it already has returns that run's status (idempotent);
- after a restart it settles its open runs from the shim's files exactly as the scheduler does
  (engine/exec/reconcile.py): adopt live shims, ingest finished ones, launch never-started ones, and
  call the rest `unknown`;
- a finished run's result stays in the journal until a scheduler acknowledges it *after*
  recording it (at-least-once delivery; the ledger makes recording exactly-once);
- it persists the highest epoch any scheduler has shown it and refuses (409) commands from a
  lower one, so a deposed scheduler cannot start, kill or acknowledge anything.

The package, lowest layer first (each module imports only those above it):

    refusals.py   what the agent refuses and the HTTP status of each (private to this package),
                  and the one check of an id a request carries
    journal.py    the journal database; its SQL is journal.sql beside it, by name
    service.py    AgentService: the agent's behaviour, independent of HTTP
    routes.py     AgentApp: the plain ASGI app (auth, a name → route table, JSON bodies)
    serve.py      serve_agent: options, token file, TLS, listening (uvicorn)

It may import engine.agents.protocol (the wire format), engine.exec, engine.sqlfile
(the named-query loader), engine.paths, engine.clock, engine.ids, engine.users, engine.sdnotify and
engine.errors; never the scheduler, the dispatcher or the ledger. This module re-exports what the
CLI (serve_agent) and the tests use.
"""

from engine.agents.server.journal import JOURNAL_SCHEMA
from engine.agents.server.routes import AgentApp
from engine.agents.server.serve import serve_agent
from engine.agents.server.service import AgentService

__all__ = ["JOURNAL_SCHEMA", "AgentApp", "AgentService", "serve_agent"]
