import pytest

from smoothrot.ortops.library import OrtOpsUnavailable, library_path


@pytest.fixture(scope="session")
def built() -> None:
    """The custom-op library, built once (skips where it cannot be built)."""
    try:
        library_path(build=True)
    except OrtOpsUnavailable as exc:
        pytest.skip(f"custom-op library cannot be built here: {exc}")
