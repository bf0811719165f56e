"""From scores to decisions about teachers: leaderboards with intervals, Spearman and β fits; the pure stopping
rules; adaptive ranking (score until the order is decided); teacher trials (generate and score until decided).
"""

from car_hf._lazy import lazy_exports

_EXPORTS = {
    "rank_generators": "car_hf.ranking.leaderboard",
    "fit_beta": "car_hf.ranking.leaderboard",
    "BetaFit": "car_hf.ranking.leaderboard",
    "spearman_table": "car_hf.ranking.leaderboard",
    "rank_adaptive": "car_hf.ranking.adaptive",
    "AdaptiveResult": "car_hf.ranking.stopping",
    "rank_teachers": "car_hf.ranking.trial",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, legacy="car_hf.ranking.leaderboard")
