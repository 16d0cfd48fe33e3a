"""Seeded fuzzing of the ingestion (tests/helpers/fuzz.py): real files of every supported
format, damaged 300 ways, each audited alone.  Every damaged file must come back audited or
quarantined with a reason, nothing may escape the readers, and no file may take long or
allocate what a damaged header claims.  ``benchmarks/fuzz_ingest.py`` runs thousands."""
from __future__ import annotations

from collections import Counter

import pytest

from helpers.fuzz import MUTATIONS, campaign

N_MUTATIONS = 300
SECONDS_PER_FILE = 30.0  # a hang guard on a loaded machine; the benchmark reports the real figure
PEAK_BYTES = 256 * 1024**2


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return campaign(N_MUTATIONS, seed=20261130, work=tmp_path_factory.mktemp("fuzz"))


def test_the_campaign_covers_every_format_and_mutation(outcomes):
    seeds = Counter(o.seed_name for o in outcomes)
    assert len(seeds) == 16 and min(seeds.values()) >= 15
    assert set(o.mutation for o in outcomes) == set(MUTATIONS)
    # damage is real: many files are refused, and some survive (a flipped pixel bit)
    assert sum(o.ok_slices == 0 for o in outcomes) > N_MUTATIONS // 4
    assert sum(o.ok_slices > 0 for o in outcomes) > N_MUTATIONS // 10


def test_no_exception_escapes_and_no_file_is_lost(outcomes):
    escaped = [(o.seed_name, o.mutation, o.escaped) for o in outcomes if o.escaped]
    lost = [(o.seed_name, o.mutation, o.target) for o in outcomes if o.lost]
    assert escaped == [] and lost == []
    assert all(o.reasons or o.quarantined == 0 for o in outcomes)  # every quarantine says why


def test_no_file_takes_long_or_allocates_what_a_header_claims(outcomes):
    slowest = max(outcomes, key=lambda o: o.seconds)
    largest = max(outcomes, key=lambda o: o.peak_bytes)
    assert slowest.seconds < SECONDS_PER_FILE, slowest
    assert largest.peak_bytes < PEAK_BYTES, largest
