"""Running jobs on this host: the /bin/sh shim, process groups, run directories, exit evidence.

Layer: exec. May import the base modules and the store's connection helpers, never run/, agents/ or ha/.
"""
