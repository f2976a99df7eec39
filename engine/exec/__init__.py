"""Running jobs: the Executor port the scheduler drives (port.py), its shim executor on this host
(runner.py, over local.py's shims, process groups, run directories and exit evidence), and a
FakeExecutor for tests (fake.py). The agent dispatcher (engine/agents) implements the same port.

Layer: exec. May import the base modules and the store (its Store protocol, its connection
helpers), never run/, agents/ or ha/.
"""
