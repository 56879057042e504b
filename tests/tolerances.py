"""Float32 tolerances from the arithmetic, for tests that compare two float32 computations (or one against
float64) that sum in different orders: the numbers any x86 or other machine gives, not the ones this one does."""
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7: the relative rounding of one float32 operation
# Scores of the memory attentions in the tests' models: PCMA's keys are 10 x a softmax, so a score (a sum of
# products of two vectors that each sum to 10) is at most 100; TMA's and STF's tiny models stay below that.
SCORE_BOUND = 100.0


def softmax_read_tolerance(scores: float, values: float) -> float:
  """A float32 softmax read against the exact one: scores of size up to S are rounded by ~eps*S, which moves the
  softmax weights by that relative amount and the read by ~eps*S*V (V: the largest value); twice that for the
  exponentials and the sums. S at least 1: the read's own sums round by ~eps*V."""
  return 2 * EPS32 * max(float(scores), 1.0) * float(values)


def reordered_sums_tolerance(want) -> float:
  """A model's outputs computed twice with the sums in other orders (one `step` per frame vs the clip apply over
  B*T frames, or another attention implementation): ~eps relative per sum, and an attention over scores of size
  S turns that into ~eps*S of what it reads; hence eps * SCORE_BOUND * the largest output."""
  return EPS32 * SCORE_BOUND * max(float(np.abs(np.asarray(want)).max()), 1e-3)
