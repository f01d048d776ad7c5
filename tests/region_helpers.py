"""Pieces of region configs shared by tests of single stages."""

from __future__ import annotations

# A region config needs a mobility source even where the stage under test
# reads none; this one names a file that is never opened.
UNUSED_MOBILITY = [
    {
        "name": "flows",
        "kind": "od_table",
        "input": "unused.csv",
        "origin": "a",
        "destination": "b",
        "flow": "trips",
    }
]
