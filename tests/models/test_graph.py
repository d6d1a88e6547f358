"""Tests of the graph analysis shared by the training and deployment
graphs."""

import pytest

import keras_shufflenet as ks
from keras_shufflenet.models import graph
from keras_shufflenet.models import layers


@pytest.mark.parametrize("groups,order,contiguous", [
    (3, "paper", True), (8, "paper", True), (3, None, True),
    # n = 20 channels per group, not a multiple of 3: strided sets.
    (3, "official", False),
])
def test_shuffle_plan_sends_each_channel_where_the_shuffle_does(
    groups, order, contiguous
):
    channels = 20 * groups
    shuffle = None if order is None else ks.ChannelShuffle(groups, order)
    plan = graph.shuffle_plan(channels, groups, shuffle)
    if not contiguous:
        assert plan is None
        return
    sizes, orders = plan
    perm = (list(range(channels)) if shuffle is None else
            layers.shuffle_permutation(channels, groups, order))
    n = channels // groups
    # Rebuild every group's channels from the slices and compare.
    for j in range(groups):
        received = []
        for i in range(groups):
            start = sum(sizes[i][:j])
            received += [i * n + k for k in range(start, start + sizes[i][j])]
        assert received == [perm[q] for q in orders[j]]
        assert sorted(orders[j]) == list(range(j * n, (j + 1) * n))
