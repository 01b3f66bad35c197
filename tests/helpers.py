"""Small helpers shared by tests (imported as ``from helpers import ...``; tests/ is on sys.path)."""

import numpy as np


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
