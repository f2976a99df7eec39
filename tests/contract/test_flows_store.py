"""The Store contract for flows: a run's flow id and outputs, the flows a new active continues from."""

from __future__ import annotations

from engine.model import RunState
from engine.store import intents as i
from engine.store.abc import Store
from tests.contract.test_store import NOW, fire, leading


async def test_flow_ids_outputs_and_the_flows_with_an_open_step(store: Store) -> None:
    await leading(store)
    await store.commit(
        [
            fire(1, job="root", flow_id=1),  # started a flow
            fire(2, job="lone"),  # in no flow
            fire(3, job="done-root", flow_id=3),
        ]
    )
    await store.commit(
        [
            i.RunFinished(1, RunState.SUCCEEDED, None, 0, NOW, outputs=(("A", "1"), ("B", "x=y"))),
            fire(4, job="step", flow_id=1),  # its step, in the same transaction as the end
            i.RunFinished(3, RunState.FAILED, "exit code 1", 1, NOW),
        ]
    )
    root, lone, step = await store.run(1), await store.run(2), await store.run(4)
    assert root is not None and lone is not None and step is not None
    assert (root.flow_id, lone.flow_id, step.flow_id) == (1, 2, 1)  # a run in no flow is its own
    assert root.outputs == (("A", "1"), ("B", "x=y"))
    start = await store.start_state()
    # Flow 1 has an open step; flow 3 has ended; run 2 is in none.
    assert [run.id for run in start.flow_runs] == [1, 4]
    assert [run.id for run in await store.flow_runs(1)] == [1, 4]
    assert [run.id for run in await store.flow_runs(3)] == [3]
