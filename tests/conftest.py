import os
from pathlib import Path

import pytest
import torch

# The test models are tiny: one thread is as fast, and a second one only spins (badly so on a busy CPU).
torch.set_num_threads(1)

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "official"


DATA = Path(__file__).resolve().parent / "data"


def official_file(name: str) -> Path:
    """A file of ../shared/official ($VAR_OFFICIAL_DIR overrides), else the copy in tests/data
    (keys.json is small enough to keep here; the 20 MB fixture is not): skipped when neither exists."""
    for folder in (Path(os.environ.get("VAR_OFFICIAL_DIR", OFFICIAL)), DATA):
        if (folder / name).exists():
            return folder / name
    pytest.skip(f"{name} not found in {OFFICIAL} or {DATA}")


@pytest.fixture(scope="session")
def fixture():
    return torch.load(official_file("tiny_fixture.pt"), weights_only=True)


@pytest.fixture(scope="session")
def tiny_pipe(fixture):
    from var import VARPipeline
    return VARPipeline.from_official(fixture["vae_state_dict"], fixture["var_state_dict"])
