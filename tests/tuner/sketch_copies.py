"""Independent references for tuner tests: a model with chosen layers sketched, built without the tuner."""

import copy

from panther.nn import SKLinear


def with_sketches(model, ranks):
    """An independent copy of ``model`` with the layers ``ranks`` names sketched (num_terms=1, svd)."""
    sketched = copy.deepcopy(model)
    for name, rank in ranks.items():
        setattr(sketched, name, SKLinear.from_dense(getattr(model, name), num_terms=1, low_rank=rank))
    return sketched
