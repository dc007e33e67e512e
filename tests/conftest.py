import os
from pathlib import Path

import pytest
import torch

# The test models are tiny: one thread is as fast, and a second one only spins (badly so on a busy CPU).
torch.set_num_threads(1)

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "official"


def official_file(name: str) -> Path:
    """A file of ../shared/official; the conformance tests are skipped when it is absent."""
    path = Path(os.environ.get("VAR_OFFICIAL_DIR", OFFICIAL)) / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def fixture():
    return torch.load(official_file("tiny_fixture.pt"), weights_only=True)


@pytest.fixture(scope="session")
def tiny_pipe(fixture):
    from var import VARPipeline
    return VARPipeline.from_official(fixture["vae_state_dict"], fixture["var_state_dict"])
