"""The hnswlib checkpoint file: ``HnswCapture`` writes hnswlib's own file format (and the
``.deleted.json`` beside it) from a captured ``__getstate__``, so ``hnswlib.Index.load_index``
reads it back unchanged."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from jade.indexes.base import IndexCapture

# hnswlib 0.8 ``HierarchicalNSW::saveIndex`` header: offsetLevel0, max_elements, element count,
# size_data_per_element, label_offset, offsetData (size_t), maxlevel (int), enterpoint_node
# (tableint = uint32), maxM, maxM0, M (size_t), mult (double), ef_construction (size_t)
HNSW_HEADER = struct.Struct("<QQQQQQiIQQQdQ")


class HnswCapture(IndexCapture):
    """hnswlib's state (``Index.__getstate__``: one copy of its memory) and the deletion marks.
    ``write`` writes hnswlib's own file format from it, byte for byte what ``save_index`` would
    have written at the capture (``tests/test_index_checkpoint.py`` compares the two), so loading
    is unchanged (``load_index``). Written by us rather than by a second ``hnswlib.Index``
    rebuilt from the state: no third copy of the index in memory, and the GIL is released
    while the bytes go to the file (``save_index`` holds it throughout)."""

    def __init__(self, state: dict[str, Any], deleted: list[int]) -> None:
        if state.get("ser_version") != 1 or state.get("offset_level0") != 0:
            raise RuntimeError(
                f"hnswlib state version {state.get('ser_version')!r} not known: cannot write "
                "a checkpoint from it (check the hnswlib version)"
            )
        self.state, self.deleted = state, deleted

    def write(self, path: str) -> None:
        st = self.state
        n, size = int(st["cur_element_count"]), int(st["size_data_per_element"])
        header = HNSW_HEADER.pack(
            0,
            int(st["max_elements"]),
            n,
            size,
            int(st["label_offset"]),
            int(st["offset_data"]),
            int(st["max_level"]),
            int(st["enterpoint_node"]) & 0xFFFFFFFF,  # -1 (no element yet) as a tableint
            int(st["max_M"]),
            int(st["max_M0"]),
            int(st["M"]),
            float(st["mult"]),
            int(st["ef_construction"]),
        )
        level0 = np.asarray(st["data_level0"]).view(np.uint8)[: n * size]
        levels = np.asarray(st["element_levels"])[:n]
        links = np.asarray(st["link_lists"]).view(np.uint8)
        with open(path, "wb") as fh:
            fh.write(header)
            fh.write(level0.data)
            fh.write(_link_section(levels, links, int(st["size_links_per_element"])).data)
        with open(path + ".deleted.json", "w") as fh:
            json.dump(self.deleted, fh)


def _link_section(levels: np.ndarray, links: np.ndarray, per_level: int) -> np.ndarray:
    """The tail of hnswlib's file: per element, the byte size of its upper-level link lists
    (uint32, ``level * per_level``) followed by those bytes, taken in order from ``links`` (the
    lists of all elements back to back, as ``__getstate__`` gives them)."""
    sizes = levels.astype(np.int64) * per_level
    if int(sizes.sum()) != len(links):
        raise RuntimeError("hnswlib state: link lists do not match the element levels")
    n = len(sizes)
    out = np.empty(4 * n + len(links), dtype=np.uint8)
    head = 4 * np.arange(n, dtype=np.int64)
    head[1:] += np.cumsum(sizes)[:-1]
    at = head[:, None] + np.arange(4)  # the 4 size bytes of each element
    out[at] = sizes.astype("<u4").view(np.uint8).reshape(n, 4)
    body = np.ones(len(out), dtype=bool)
    body[at] = False
    out[body] = links
    return out
