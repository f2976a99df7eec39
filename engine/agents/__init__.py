"""Remote agents: the wire protocol, the scheduler-side dispatcher and the agent server."""
