"""Short names for the shared detection fixtures of tests/conftest.py, used by every detection test file."""

import pytest


@pytest.fixture
def tiny(tiny_detector):
    """The untrained ``deepcr_2_4`` saved with its sidecar and a card (tests/conftest.py: ``tiny_detector``)."""
    return tiny_detector


@pytest.fixture
def frame(detection_frame):
    """The seeded synthetic frame of tests/conftest.py (``detection_frame``)."""
    return detection_frame
