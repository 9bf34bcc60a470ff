"""The embedding map's colour-by choices: the keyword fields that group points."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.projection import MapVersion, make_map
from pipeline.schemas import point_id
from pipeline.store.edge import EdgeStore

FIELDS = {"image_id": "keyword", "dx": "keyword", "site": "keyword", "scanner": "keyword"}


def test_colour_by_leaves_out_keys_and_fields_no_point_carries(tmp_path: Path) -> None:
    """Three points (drawn on a line: no t-SNE): `image_id` has a value per point and `site`
    none, so neither colours; the label colours even with a value per point."""
    store = EdgeStore(tmp_path / "edge")
    schema = {"fields": FIELDS, "key_field": "image_id", "label_field": "dx"}
    store.ensure_collection("c", {"dim": 4, "model": "m", "pooling": "mean", "schema": schema})
    payloads = [
        {"image_id": f"img-{i}", "dx": dx, "scanner": "A"}
        for i, dx in enumerate(["nevus", "melanoma", "keratosis"])
    ]
    ids = [point_id("map", "train", p["image_id"]) for p in payloads]
    store.upsert("c", ids, np.eye(3, 4, dtype=np.float32), payloads)
    drawn = make_map(store, MapVersion("c", None))
    store.close()
    assert sorted(drawn.fields) == ["dx", "scanner"]
    assert sorted(drawn.fields["dx"]) == sorted(p["dx"] for p in payloads)
