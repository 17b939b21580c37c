"""Every MLflow call of the project, one module per job:

- names: tags, metric and param names, a recorded cell read back from its params
- uri: where the store is; credentials kept out of everything shown or stored
- store: opening and checking the store (SQLite paths included), the retrying client, writes
- cells: the cell-claims protocol (claims, finished cells, waiting, abandoned runs, heartbeats)
- cell_record: filling a claimed cell run (metrics, artifacts, the LoggedModel)
- read: reading runs back (a parent's cells and tables, a cell's run, history, weights, designs)
- arms: the arm summary runs and the UI view that lists them
- parent: the parent run, opened before the cells and closed with the analysis

:class:`Tracker` is all of them on one experiment; the resume and concurrency protocol is
described in :mod:`bnpipe.tracking.cells`.
"""

from __future__ import annotations

from bnpipe.tracking.arms import arms_view_key
from bnpipe.tracking.cell_record import CellRecord
from bnpipe.tracking.cells import HEARTBEAT_S, STALE_AFTER_S, CellRun, CellSpec, Claims, Owner
from bnpipe.tracking.names import (
    ABANDONED,
    ARM_METRICS,
    ARM_ORDER_TAG,
    ARM_ROLE,
    CELL_KEY_TAG,
    DESIGN_CELLS_TAG,
    DESIGN_ID_TAG,
    ERROR_TAG,
    FAILURE_TAG,
    FLOW_RUN_ID_TAG,
    FLOW_RUN_URL_TAG,
    HEARTBEAT_TAG,
    INTERRUPTED,
    KIND_TAG,
    NEW_DESIGN_TAG,
    NOTE_TAG,
    OUTCOMES,
    OWNER_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SHARED_VIEW_PREFIX,
    STATUS_TAG,
    TAG_PREFIX,
    UNUSABLE_TAG,
    WITHDRAWN,
    grid_factors,
    logged_params,
    metric_name,
    parent_params,
    recorded_cell,
)
from bnpipe.tracking.parent import ParentRecord, ParentRun, reused_table
from bnpipe.tracking.store import (
    ArtifactWriteError,
    TrackingError,
    UnreadableArtifact,
    check_sqlite_path,
    release_interrupted_write,
)
from bnpipe.tracking.uri import (
    LOCAL_UI,
    STORE_DIR,
    move_credentials,
    redact_uri,
    resolve_uri,
    run_url,
    without_credentials,
)


class Tracker(ParentRecord, CellRecord):
    """An experiment in one tracking store; all writes of one flow run go through it."""


__all__ = [
    "ABANDONED",
    "ARM_METRICS",
    "ARM_ORDER_TAG",
    "ARM_ROLE",
    "CELL_KEY_TAG",
    "DESIGN_CELLS_TAG",
    "DESIGN_ID_TAG",
    "ERROR_TAG",
    "FAILURE_TAG",
    "FLOW_RUN_ID_TAG",
    "FLOW_RUN_URL_TAG",
    "HEARTBEAT_S",
    "HEARTBEAT_TAG",
    "INTERRUPTED",
    "KIND_TAG",
    "LOCAL_UI",
    "NEW_DESIGN_TAG",
    "NOTE_TAG",
    "OUTCOMES",
    "OWNER_TAG",
    "PARENT_TAG",
    "ROLE_TAG",
    "SHARED_VIEW_PREFIX",
    "STALE_AFTER_S",
    "STATUS_TAG",
    "STORE_DIR",
    "TAG_PREFIX",
    "UNUSABLE_TAG",
    "WITHDRAWN",
    "ArtifactWriteError",
    "CellRun",
    "CellSpec",
    "Claims",
    "Owner",
    "ParentRun",
    "Tracker",
    "TrackingError",
    "UnreadableArtifact",
    "arms_view_key",
    "check_sqlite_path",
    "grid_factors",
    "logged_params",
    "metric_name",
    "move_credentials",
    "parent_params",
    "recorded_cell",
    "redact_uri",
    "release_interrupted_write",
    "resolve_uri",
    "reused_table",
    "run_url",
    "without_credentials",
]
