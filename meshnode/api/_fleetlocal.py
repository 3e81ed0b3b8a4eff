"""This node's stored records for fleet flow queries (``meshnode.mesh.LocalHistory``).

A member answers a fleet flow query from its own store exactly as ``Observer.Flows`` would answer the same
request: the filters are validated by the same ``Selector`` under the same limits (INVALID_ARGUMENT naming
the field), pushed down into the same SQL, read in one snapshot up to the last closed period, in a worker of
the API's executor; rows become ``Flow`` messages as ``HistoryReader`` makes them. Each record comes with its
store key, from which the asking node builds the cursor of the next page.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from meshnode.api._filters import FilterError, Selector
from meshnode.api._servicer import MAX_FLOWS, _check_times
from meshnode.store import ROW_FIELDS, FlowQuery
from meshnode.v1 import flow_pb2, mesh_pb2

if TYPE_CHECKING:
    from meshnode.api._executor import ApiExecutor
    from meshnode.store import Store
    from meshnode.v1 import observer_pb2


class StoreHistory:
    """The node's store as a fleet flow query sees it.

    Args:
        store: the node's store.
        executor: the API's workers (queries never run on the event loop).
    """

    def __init__(self, store: Store, executor: ApiExecutor) -> None:
        self.store = store
        self.executor = executor

    def check(self, flows: observer_pb2.FlowsRequest) -> Selector:
        """Validate ``flows`` as ``Observer.Flows`` does; raises ``FilterError`` (a ``ValueError``)."""
        sel = Selector.from_request(flows.whitelist, flows.blacklist)
        _check_times(since_ns=flows.since_ns, until_ns=flows.until_ns)
        if flows.number > MAX_FLOWS:
            raise FilterError("number", f"{flows.number} is over the server maximum of {MAX_FLOWS}")
        return sel

    async def local_flows(
        self, flows: observer_pb2.FlowsRequest, after: tuple[int, int, int] | None, limit: int, deadline_s: float
    ) -> tuple[list[flow_pb2.Flow], list[mesh_pb2.FleetFlowKey], bool]:
        """Up to ``limit`` records after store key ``after``, their keys, and whether more match."""
        sel = self.check(flows)
        query = sel.query(FlowQuery(flows.since_ns, flows.until_ns, flows.include_interim, None, after))
        return await self.executor.run(self._read, query, limit, time.monotonic() + deadline_s)

    def _read(self, query: FlowQuery, limit: int, deadline: float
              ) -> tuple[list[flow_pb2.Flow], list[mesh_pb2.FleetFlowKey], bool]:
        Flow, FleetFlowKey = flow_pb2.Flow, mesh_pb2.FleetFlowKey
        names = ROW_FIELDS
        flows: list[flow_pb2.Flow] = []
        keys: list[mesh_pb2.FleetFlowKey] = []
        with self.store.reader(deadline) as conn:
            q = dataclasses.replace(query, max_period=self.store.last_closed_period(conn))
            for row in self.store.query_rows(q, conn, deadline=deadline):
                if len(flows) == limit:
                    return flows, keys, True
                flows.append(Flow(**dict(zip(names, row, strict=False))))  # row ends with the flag and the key
                keys.append(FleetFlowKey(table=row[-2], row_id=row[-1]))
        return flows, keys, False
