"""Accept or review: the rule that turns one image's scores into a decision and its reason.

    decide(router_score=0.4, ood_score=0.7, confidence=0.93, confidence_threshold=0.6)
        ->  Decision("accept", None)

Pure (plain floats in, no model, no torch), so every boundary is pinned by a table of unit tests
and mutation testing runs in seconds (docs/testing.md). The checks run in order; the first that
fires names the reason:

1. the router's OOD score over its bound: the image is not one of the supported crops;
2. the crop adapter's OOD score over its bound: unfamiliar for the crop it was given;
3. the disease probability under the confidence threshold: the model is unsure.

OOD scores are distance / held-out threshold (serving.ood), so 1.0 is the bound: a score exactly
at it is still familiar, anything over it is not. A request that names its crop skips the router,
and its router score is None.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ACCEPT", "REVIEW", "NOT_A_SUPPORTED_CROP", "UNFAMILIAR_FOR_CROP", "LOW_CONFIDENCE", "OOD_BOUND",
           "Decision", "decide"]

ACCEPT = "accept"
REVIEW = "review"
NOT_A_SUPPORTED_CROP = "not_a_supported_crop"
UNFAMILIAR_FOR_CROP = "unfamiliar_for_crop"
LOW_CONFIDENCE = "low_confidence"
OOD_BOUND = 1.0  # a score is a distance over its threshold: > 1 is past the held-out acceptance quantile


class Decision(NamedTuple):
    decision: str        # ACCEPT | REVIEW
    reason: str | None   # None when accepted, else the check that fired


def decide(router_score: float | None, ood_score: float, confidence: float,
           confidence_threshold: float) -> Decision:
    """The decision for one image; `router_score` None when the request named the crop."""
    if router_score is not None and router_score > OOD_BOUND:
        return Decision(REVIEW, NOT_A_SUPPORTED_CROP)
    if ood_score > OOD_BOUND:
        return Decision(REVIEW, UNFAMILIAR_FOR_CROP)
    if confidence < confidence_threshold:
        return Decision(REVIEW, LOW_CONFIDENCE)
    return Decision(ACCEPT, None)
