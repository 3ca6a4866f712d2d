import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(min(2, torch.get_num_threads()))

# a subprocess's timeout catches a hang, never the pace of the code: a loaded 2-core machine runs these
# several times slower than an idle one, and the whole suite must still pass there
HANG = 1800

# Hypothesis draws the same examples on every run (derandomized) and keeps no example database between runs,
# so that a run's result depends on the code alone
from hypothesis import settings  # noqa: E402

settings.register_profile("repeatable", derandomize=True, database=None)
settings.load_profile("repeatable")


@pytest.fixture
def float64():
    """The default dtype float64 for one test (the tests that claim exactness: pytestmark = usefixtures)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
