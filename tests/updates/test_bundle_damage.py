"""A damaged bundle is refused with one ValueError, whatever the damage."""

import random

import pytest

from vmis.packaging.bundle import bundle_bytes, bundle_version


def test_random_damage_is_always_a_value_error():
    data = bundle_bytes()
    rng = random.Random(2026)
    refused = 0
    for _ in range(400):
        damaged = bytearray(data)
        for _ in range(3):
            damaged[rng.randrange(len(damaged))] ^= rng.randrange(1, 256)
        try:
            bundle_version(bytes(damaged))
        except ValueError:
            refused += 1
    assert refused > 300  # nearly every damage is found; none escapes as another error


def test_a_cut_bundle_is_refused():
    data = bundle_bytes()
    with pytest.raises(ValueError):
        bundle_version(data[: len(data) // 2])
