"""High availability on one host: the leader lock, the standby's heartbeat watch, the active's control
socket, and the Node that moves between standby and active.

Modules: `lock` (LeaderLock: the flock that elects), `heartbeat` (HeartbeatWatcher, the hang evidence
and verdict, Takeover), `control_server` (the active's Unix-socket server: peer identity, refusal
audit, heartbeat stream), `node` (Node, acting on the scheduler's `model.StopReason`).

Layer: ha, above run and control. May import the base modules, config, store, exec, run and
control; never api or cli.
"""

from engine.ha.heartbeat import HolderEvidence, hang_target
from engine.ha.lock import LeaderLock
from engine.ha.node import Node

__all__ = ["HolderEvidence", "LeaderLock", "Node", "hang_target"]
