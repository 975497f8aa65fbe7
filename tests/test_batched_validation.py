"""Reading validates records in blocks (one neighbour-list call for the overlap check of a block):
bad records must still be reported, raised or skipped at their own place in the stream."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crysbench.data import Crystal, RecordError, read
from crysbench.data.crystal import Provenance
from crysbench.data.readers import READERS, VALIDATE_BLOCK, RawRecord, ReaderSpec
from crysbench.data.validate import min_periodic_distance, min_periodic_distances

N = 2 * VALIDATE_BLOCK + 20
BAD = {5, VALIDATE_BLOCK, 2 * VALIDATE_BLOCK + 3}  # one in each block, one on a block's first record


def _crystal(i: int) -> Crystal:
    rng = np.random.default_rng(i)
    cell = np.diag(rng.uniform(3.0, 6.0, 3)) + rng.uniform(-0.5, 0.5, (3, 3))
    pos = rng.uniform(0, 1, (3, 3)) @ cell
    pos[1] = pos[0] + ([0.1, 0, 0] if i in BAD else [1.6, 0.3, 0.2])
    pos[2] = pos[0] + [0.2, 1.7, -0.4]
    return Crystal(id=f"c{i}", cell=cell, positions=pos, numbers=[14, 8, 8])


def test_blocks_keep_order_in_skip_mode():
    reading = read([_crystal(i) for i in range(N)], "memory", on_error="skip")
    assert [c.id for c in reading] == [f"c{i}" for i in range(N) if i not in BAD]
    assert [s.record for s in reading.skipped] == [f"record {i} (id 'c{i}')" for i in sorted(BAD)]
    assert all(s.reason.startswith("overlapping atoms") for s in reading.skipped)


def test_fail_mode_raises_at_the_first_bad_record():
    seen = []
    with pytest.raises(RecordError, match=r"record 5 \(id 'c5'\): overlapping atoms"):
        for c in read([_crystal(i) for i in range(N)], "memory"):
            seen.append(c.id)
    assert seen == [f"c{i}" for i in range(5)]


def _broken_reader(items, targets):
    """Records 0..k-1, then the reader itself fails (as a malformed file does)."""
    for i, c in enumerate(items):
        yield RawRecord(Provenance("<memory>", i, c.id, "broken"), lambda c=c: (c, {}))
    raise ValueError("reader broke after the last record")


@pytest.fixture
def broken_format():
    READERS["_broken"] = ReaderSpec(_broken_reader, "memory", "test")
    yield "_broken"
    del READERS["_broken"]


def test_reader_error_comes_after_the_records_before_it(broken_format):
    items = [_crystal(i) for i in range(7)]  # record 5 is bad, then the reader raises
    reading = read(items, broken_format, on_error="skip")
    seen = []
    with pytest.raises(ValueError, match="reader broke"):
        for c in reading:
            seen.append(c.id)
    assert seen == ["c0", "c1", "c2", "c3", "c4", "c6"]
    assert [s.record for s in reading.skipped] == ["record 5 (id 'c5')"]
    with pytest.raises(RecordError, match="record 5"):  # fail mode: the bad record comes first
        list(read(items, broken_format))


def test_batched_min_distances_equal_one_by_one():
    crystals = [_crystal(i) for i in range(40)] + [_crystal(5)]
    for cutoff in (0.5, 2.0, 20.0):
        want = [min_periodic_distance(c, cutoff) for c in crystals]
        got = min_periodic_distances(crystals, cutoff)
        assert got == want, f"cutoff {cutoff}: batched {got[:5]} != one by one {want[:5]}"
    assert min_periodic_distances([], 0.5) == []
    assert math.isinf(min_periodic_distances([_crystal(0)], 0.5)[0])
