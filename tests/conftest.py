import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Two cores on CI: one intra-op thread per test process keeps timings sane and avoids OpenMP
# contention with anything else running (the design note measured 0.7-2.2 s forwards otherwise).
torch.set_num_threads(int(os.environ.get("RANKSEG_TEST_THREADS", "1")))

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
