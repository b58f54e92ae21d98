"""The accept/review rule (serving.decision) at every boundary, and which depth's OOD statistics
score an early-exited image (serving.ood), with no model set: plain floats and hand-made tensors.

The model-set tests (unit/test_pipeline_review.py, api/test_contract.py) prove the same decisions
through Pipeline.diagnose; these pin the edges exactly and let mutation testing run in seconds.
"""

from __future__ import annotations

import math

import pytest
import torch

from serving import decision
from serving.decision import Decision, decide
from serving.ood import DepthStats, OODModel

T = 0.6                              # a confidence threshold
OVER = math.nextafter(1.0, math.inf)  # the smallest score past the OOD bound
UNDER_T = math.nextafter(T, -math.inf)

# (router score, adapter OOD score, confidence, threshold) -> (decision, reason)
CASES = [
    # the router's OOD bound: at 1.0 still a supported crop, just over it not
    ((1.0, 0.5, 0.9, T), ("accept", None)),
    ((OVER, 0.5, 0.9, T), ("review", "not_a_supported_crop")),
    ((1.5, 0.5, 0.9, T), ("review", "not_a_supported_crop")),
    ((float("inf"), 0.5, 0.9, T), ("review", "not_a_supported_crop")),
    # a request that named its crop has no router score: only the adapter's checks
    ((None, 0.5, 0.9, T), ("accept", None)),
    ((None, OVER, 0.9, T), ("review", "unfamiliar_for_crop")),
    ((None, 1.0, 0.9, T), ("accept", None)),
    # the adapter's OOD bound: at 1.0 familiar, just over it not
    ((0.5, 1.0, 0.9, T), ("accept", None)),
    ((0.5, OVER, 0.9, T), ("review", "unfamiliar_for_crop")),
    ((0.5, 7.0, 0.9, T), ("review", "unfamiliar_for_crop")),
    # the confidence threshold: at it accepted, just under it not
    ((0.5, 0.5, T, T), ("accept", None)),
    ((0.5, 0.5, UNDER_T, T), ("review", "low_confidence")),
    ((0.5, 0.5, 0.0, T), ("review", "low_confidence")),
    ((0.5, 0.5, 1.0, 1.0), ("accept", None)),
    ((0.5, 0.5, 0.99, 1.0), ("review", "low_confidence")),
    ((None, 0.5, 0.3, 0.0), ("accept", None)),
    # scores of 0 are the most familiar there are
    ((0.0, 0.0, 0.9, T), ("accept", None)),
    # the order of the checks: the first that fires names the reason
    ((OVER, OVER, 0.0, T), ("review", "not_a_supported_crop")),
    ((OVER, 0.5, 0.0, T), ("review", "not_a_supported_crop")),
    ((1.0, OVER, 0.0, T), ("review", "unfamiliar_for_crop")),
    ((None, OVER, 0.0, T), ("review", "unfamiliar_for_crop")),
]


@pytest.mark.parametrize("args, expected", CASES, ids=[f"{a}->{e[1]}" for a, e in CASES])
def test_decision_table(args, expected):
    got = decide(*args)
    assert isinstance(got, Decision)
    assert (got.decision, got.reason) == expected
    assert tuple(got) == expected  # callers unpack it as (decision, reason)


def test_reason_strings_are_the_api_contract():
    # The service's JSON carries these words (serving/schemas.py, docs); renaming one breaks clients.
    assert (decision.ACCEPT, decision.REVIEW) == ("accept", "review")
    assert (decision.NOT_A_SUPPORTED_CROP, decision.UNFAMILIAR_FOR_CROP, decision.LOW_CONFIDENCE) == (
        "not_a_supported_crop", "unfamiliar_for_crop", "low_confidence")
    assert decision.OOD_BOUND == 1.0


def test_keywords_name_the_scores():
    got = decide(router_score=None, ood_score=0.2, confidence=0.1, confidence_threshold=0.5)
    assert got == Decision(decision="review", reason="low_confidence")


# ---------------------------------------------------------------- early exit: which statistics score
# Two classes at (0, 0) and (10, 0), identity metric, so a feature at (2, 0) is at distance 2 from
# the nearest class mean at every depth; each depth's held-out thresholds differ, so the score says
# which depth's statistics were picked: last block 2/1, block 3 2/4, block 6 2/2.
MEANS = torch.tensor([[0.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
ZERO, ONE = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
LAST_BLOCK = 12


def depth_stats(threshold: float, shift: float = 0.0) -> DepthStats:
    center = torch.tensor([shift, 0.0], dtype=torch.float64)
    return DepthStats(center, ONE, MEANS, torch.tensor([threshold, threshold]))


@pytest.fixture
def ood():
    return OODModel(center=ZERO, scale=ONE, means=MEANS, precision=torch.eye(2, dtype=torch.float64),
                    thresholds=torch.tensor([1.0, 1.0]), by_depth={3: depth_stats(4.0), 6: depth_stats(2.0)})


def feats(n: int) -> torch.Tensor:
    return torch.tensor([[2.0, 0.0]] * n)


@pytest.mark.parametrize("blocks, expected", [
    (None, [2.0, 2.0]),                          # no early exit: the last block's statistics
    ([LAST_BLOCK, LAST_BLOCK], [2.0, 2.0]),      # ran to the end
    ([3, 3], [0.5, 0.5]),                        # exited after block 3: block 3's own
    ([6, 3], [1.0, 0.5]),                        # each row its own depth
    ([5, 6], [2.0, 1.0]),                        # a block without statistics: the last block's
    ([3, LAST_BLOCK], [0.5, 2.0]),
], ids=["no-exit", "last", "depth-3", "per-row", "no-stats-falls-back", "mixed"])
def test_an_early_exited_row_is_scored_by_its_own_depths_statistics(ood, blocks, expected):
    assert ood.scores(feats(2), blocks).tolist() == pytest.approx(expected)


def test_the_depth_statistics_standardise_with_their_own_centre(ood):
    # Block 3's features sit 1 further along the first axis; its own centre takes that back out, the last block's would not.
    ood.by_depth[3] = depth_stats(4.0, shift=1.0)
    x = torch.tensor([[3.0, 0.0]])
    assert ood.scores(x, [3]).tolist() == pytest.approx([0.5])
    assert ood.scores(x, [LAST_BLOCK]).tolist() == pytest.approx([3.0])


def test_the_depth_picked_decides(ood):
    # The same feature is familiar after block 3 (its thresholds are wider) and at the bound after
    # block 6, yet unfamiliar scored by the last block's statistics.
    scores = ood.scores(feats(3), [3, 6, LAST_BLOCK]).tolist()
    got = [decide(None, s, 0.9, T) for s in scores]
    assert got == [("accept", None), ("accept", None), ("review", "unfamiliar_for_crop")]


@pytest.mark.parametrize("blocks", [None, [3, 6, LAST_BLOCK]], ids=["one-depth", "per-row"])
def test_scores_stay_on_the_device_of_the_features(ood, blocks):
    # The pipeline moves results off the accelerator once, at the end (_host); a score tensor made
    # on the default device would be a copy per call. torch's "meta" device stands in for a GPU here.
    got = ood.to("meta").scores(feats(3).to("meta"), blocks)
    assert (got.device.type, got.dtype, tuple(got.shape)) == ("meta", torch.float32, (3,))
