import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import ember  # noqa: E402

torch.set_num_threads(1)

# The repository root is the `ember` package (pyproject maps ember = "."), so it has an __init__.py, and
# pytest imports it once more, under the checkout folder's name, as the tests' parent package. A second
# copy of ember would define its torch custom ops again (new OpOverload objects: the lowering table's
# keys go stale, and `ember::zero_gradient` lowers as an extern). That name is the installed package.
_ROOT = Path(__file__).resolve().parents[1]
if Path(ember.__file__).resolve().parent == _ROOT:
    sys.modules.setdefault(_ROOT.name, ember)


@pytest.fixture(autouse=True)
def _seed():
    # Fresh random inputs every run; the seed is printed so a failure can be replayed.
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    print(f"torch seed: {seed}")
    yield seed
