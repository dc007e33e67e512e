import os
from pathlib import Path

import pytest
import torch

# The test models are tiny: one thread is as fast, and a second one only spins (badly so on a busy CPU).
torch.set_num_threads(1)

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "official"
DATA = Path(__file__).resolve().parent / "data"
# The reference fixture the repository carries (made by tests/make_fixture.py), and the larger shared one.
CARRIED_FIXTURE = DATA / "ref_fixture.pt"
SHARED_FIXTURE = "tiny_fixture.pt"


def official_dir() -> Path:
    return Path(os.environ.get("VAR_OFFICIAL_DIR", OFFICIAL))


def official_file(name: str) -> Path:
    """A file of ../shared/official ($VAR_OFFICIAL_DIR overrides), else the copy in tests/data: skipped when
    neither exists (the repository carries every file its tests read, so that happens only by mistake)."""
    for folder in (official_dir(), DATA):
        if (folder / name).exists():
            return folder / name
    pytest.skip(f"{name} not found in {official_dir()} or {DATA}")


def reference_fixtures() -> list[Path]:
    """Every reference fixture present: the carried one always, the shared one where it exists. Tests run
    once per fixture, so the carried one is checked on every machine and a fresh clone skips nothing."""
    shared = official_dir() / SHARED_FIXTURE
    return [CARRIED_FIXTURE] + ([shared] if shared.exists() else [])


@pytest.fixture(scope="session", params=reference_fixtures(), ids=lambda p: p.stem)
def fixture(request):
    return torch.load(request.param, weights_only=True)


@pytest.fixture(scope="session")
def tiny_pipe(fixture):
    from var import VARPipeline
    return VARPipeline.from_official(fixture["vae_state_dict"], fixture["var_state_dict"])
