"""The CUDA forward's dispatch rule (a pure function): fused only where its grid fills the device."""

from __future__ import annotations

import math

import pytest

from panther.ops._dispatch import use_fused_forward

H100_SMS, T4_SMS = 132, 40


@pytest.mark.parametrize("batch", [0, 1, 32, 33, 4223, 4224, 4225, 8192])
@pytest.mark.parametrize("sms", [1, T4_SMS, H100_SMS])
def test_fused_exactly_when_blocks_cover_every_sm(batch, sms):
    assert use_fused_forward(batch, 16, 64, 32, sms) == (math.ceil(batch / 32) >= sms)


def test_h100_crossover_is_at_132_blocks_of_32_rows():
    assert not use_fused_forward(32 * 131, 32, 64, 32, H100_SMS)
    assert use_fused_forward(32 * 131 + 1, 32, 64, 32, H100_SMS)  # the 132nd block has one row


def test_small_batches_never_take_the_fused_kernel():
    for batch in (1, 32, 512):
        assert not use_fused_forward(batch, 16, 64, 32, H100_SMS)


@pytest.mark.parametrize("rank2,max_rank,fused", [(64, 64, True), (65, 64, False), (32, 32, True), (33, 32, False)])
def test_rank_beyond_the_on_chip_tile_takes_two_gemms(rank2, max_rank, fused):
    assert use_fused_forward(8192, rank2, max_rank, 32, H100_SMS) == fused
