"""From scores to decisions about teachers: leaderboards with intervals, Spearman and β fits; the pure stopping
rules; adaptive ranking (score until the order is decided); teacher trials (generate and score until decided).
"""

from car_hf._lazy import lazy_exports

_MODULES = {
    "leaderboard": ("rank_generators", "fit_beta", "BetaFit", "spearman_table"), "adaptive": ("rank_adaptive",),
    "results": ("AdaptiveResult", "TrialResult"), "trial": ("rank_teachers",), "audit": ("audit_leaderboard",),
    "matrix": ("rank_matrix",),
}
__all__ = sorted(name for names in _MODULES.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _MODULES, legacy="car_hf.ranking.leaderboard")
