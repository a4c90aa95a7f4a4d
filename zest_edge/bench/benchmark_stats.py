"""The benchmark's statistics, as plain functions of labels and accuracies:

    select_test_split(labels)   the validation set cut into disjoint, class-balanced "select" and "test" halves by
                                the fixed SPLIT_SEED (the same cut for every run seed)
    choose_lr(scores)           one method's learning rate from its runs' select accuracies
    paired_difference(a, b)     a − b paired by seed, in accuracy points, with a 95% t-interval and a win count
    difference_summary(diffs)   the same for any list of paired differences (e.g. pooled over benchmarks)
"""
from __future__ import annotations

import math
import statistics

import numpy as np

from ..errors import ZestError

SPLIT_SEED = 0          # fixes the validation subset and its select/test cut, whatever the run seed


def select_test_split(labels) -> tuple[np.ndarray, np.ndarray]:
    """(select, test): sorted, disjoint index arrays covering `labels`. Each class is shuffled by SPLIT_SEED and
    halved; a class with an odd count gives its extra example to test and select in turn, so each class's halves
    differ by at most one example, and so do the whole halves."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(SPLIT_SEED)
    is_select = np.zeros(len(labels), bool)
    extra_to_select = False
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < 2:
            raise ZestError(f"class {c} has {len(members)} validation example(s); the select/test cut needs at "
                            "least 2 per class (raise `val_limit`)")
        half = len(members) // 2 + (len(members) % 2 if extra_to_select else 0)
        extra_to_select ^= bool(len(members) % 2)
        is_select[members[:half]] = True
    return np.flatnonzero(is_select), np.flatnonzero(~is_select)


def choose_lr(scores: dict[float, list[float | None]]) -> float:
    """The learning rate to report, from each lr's final select accuracies (one per seed, None: the run diverged):
    fewest diverged runs first, then the best mean select accuracy (a diverged run counting as 0), then the
    smaller lr. So an lr that diverged on any seed is chosen only when every lr diverged somewhere."""
    def key(lr):
        accs = scores[lr]
        return sum(a is None for a in accs), -statistics.fmean(0.0 if a is None else a for a in accs), lr
    return min(scores, key=key)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """a − b (accuracies by seed) over the seeds both have, in accuracy points: the per-seed differences, their
    mean, a 95% t-interval (None with fewer than 2 seeds) and how many seeds a wins, ties and loses."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return {"seeds": seeds, **difference_summary([100 * (a[s] - b[s]) for s in seeds])}


def difference_summary(diffs: list[float]) -> dict:
    """Paired differences (points): the list, their mean, a 95% t-interval (None under 2) and wins/ties/losses."""
    mean = statistics.fmean(diffs)
    interval = None
    if len(diffs) > 1:
        from scipy import stats
        half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        interval = [mean - half, mean + half]
    return {"diffs": diffs, "mean": mean, "ci95": interval, "wins": sum(d > 0 for d in diffs),
            "ties": sum(d == 0 for d in diffs), "losses": sum(d < 0 for d in diffs)}
