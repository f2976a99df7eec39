"""Remote agents: the wire protocol (`protocol`), the scheduler-side dispatcher (`dispatcher`, an
Executor) and the agent server (`server/`).

Layer: agents, above exec and below run. May import the base modules, config, store and exec; never
run/ (the scheduler hands the dispatcher a `RunContext`), control, ha/, api or cli/.
"""
