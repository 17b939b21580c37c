"""bnpipe.tracking.parent and read: the parent run as opened, and a cell read back from the store
through its params and its parent's, whatever its run name says (no training)."""

from __future__ import annotations

from bnpipe.config import load_config
from bnpipe.factors import Cell
from bnpipe.grid import cell_key_for, cell_params
from bnpipe.tracking import (
    HEARTBEAT_TAG,
    OWNER_TAG,
    ROLE_TAG,
    TAG_PREFIX,
    CellSpec,
    Owner,
    Tracker,
    reused_table,
)

BN_LR = ["grid.factors={bn: [false, true], learning_rate: [0.001, 0.1]}", "grid.seeds=[0,1]"]


def test_a_parent_opens_with_its_config_provenance_and_owner_and_its_cells_read_back(store):
    cfg = load_config(None, [*BN_LR, "train.batch_size=64"])
    tracker = Tracker(store, "parent-test")
    tracker.check()
    parent = tracker.open_parent("calm-fox", cfg, "digest", fresh=True, tags={"extra": "x"})
    run = tracker.client.get_run(parent.run_id)
    assert run.info.run_name == "calm-fox" and run.info.status == "RUNNING"
    tags, params = run.data.tags, run.data.params
    assert tags[ROLE_TAG] == "parent" and tags[TAG_PREFIX + "fresh"] == "True"
    assert tags["extra"] == "x" and HEARTBEAT_TAG in tags
    assert tags[OWNER_TAG] == Owner.current().tag()[OWNER_TAG]
    assert {k: tags[k] for k in parent.common_tags} == parent.common_tags
    assert parent.common_tags[TAG_PREFIX + "data_digest"] == "digest"
    assert params["grid.factors.learning_rate"] == "[0.001, 0.1]" and params["batch_size"] == "64"

    # A cell's levels come from its params and its grid from the parent's: a run renamed in
    # the UI is still the same cell.
    cell = Cell.of(1, bn=True, learning_rate=0.1)
    key = cell_key_for(cfg, cell, "digest")
    spec = CellSpec(key, "renamed by hand", cell_params(cfg, cell, "digest"), {})
    claims = tracker.claim_cells(parent.run_id, [spec], Owner.current())
    recorded = tracker.cell_run(claims.won[key])
    assert recorded.factors == ("bn", "learning_rate") and recorded.cell == cell

    table = reused_table({cell: recorded}, {cell: key}, cfg.grid.levels)
    columns = ["bn", "learning_rate", "seed", "run_id", "parent_run_id", "cell_key"]
    assert list(table.columns) == columns
    assert table.iloc[0]["parent_run_id"] == parent.run_id and table.iloc[0]["cell_key"] == key
