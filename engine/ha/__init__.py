"""Active/standby on one host: the leadership lock, heartbeats, takeover and the node that runs a scheduler."""
