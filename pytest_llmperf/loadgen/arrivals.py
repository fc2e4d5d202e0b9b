"""When each request is due: an absolute, seeded schedule (pure).

Infinite rate: every request is due at once. Finite rate: the gaps between
consecutive requests are drawn from a gamma distribution with shape
``burstiness`` and mean ``1 / request_rate`` (burstiness 1 is a Poisson
process; lower is burstier, higher is more regular), as the reference
benchmark does. The gaps are summed into offsets from the start, so a late
send never shifts the ones after it.
"""

from __future__ import annotations

import math
import random


def check_rate(request_rate: float, burstiness: float) -> None:
    """Reject rates and burstiness values that define no schedule."""
    if isinstance(request_rate, bool) or not isinstance(request_rate, (int, float)) or math.isnan(request_rate) \
            or request_rate <= 0:
        raise ValueError(f"request_rate must be a number > 0 (or inf), got {request_rate!r}")
    if isinstance(burstiness, bool) or not isinstance(burstiness, (int, float)) or not math.isfinite(burstiness) \
            or burstiness <= 0:
        raise ValueError(f"burstiness must be a finite number > 0, got {burstiness!r}")


def send_offsets_s(num_requests: int, request_rate: float = math.inf, burstiness: float = 1.0,
                   seed: int = 0) -> list[float]:
    """Offsets in seconds from the run's start at which each request is due.

    The first request is due at 0; request ``i`` at the sum of the first
    ``i`` gaps. Same arguments, same schedule.
    """
    if isinstance(num_requests, bool) or not isinstance(num_requests, int) or num_requests < 0:
        raise ValueError(f"num_requests must be an integer >= 0, got {num_requests!r}")
    check_rate(request_rate, burstiness)
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = random.Random(seed)
    scale_s = 1.0 / (request_rate * burstiness)  # mean gap = shape * scale = 1 / rate
    offsets, t = [], 0.0
    for _ in range(num_requests):
        offsets.append(t)
        t += rng.gammavariate(burstiness, scale_s)
    return offsets
