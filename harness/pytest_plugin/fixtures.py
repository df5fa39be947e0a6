"""The pytest plugin's fixtures (harness/pytest_plugin/__init__.py registers them): the config, the (model, recipe) case's gate
session, and the stage results of harness/stages/results.py."""
from __future__ import annotations

import pytest

from harness.errors import HarnessError
from harness.precision import NVFP4


@pytest.fixture(scope="session")
def harness_config(pytestconfig):
    """The validated gate config (--harness-config)."""
    try:
        return pytestconfig._harness.cfg
    except HarnessError as e:
        raise pytest.UsageError(str(e)) from None


@pytest.fixture(scope="session")
def harness_session(pytestconfig, harness_case):
    """The gate session of one (model, recipe) case; writes its report and closes its engine when done."""
    state = pytestconfig._harness
    s = state.session(harness_case)
    yield s
    state.finish(s)


@pytest.fixture(scope="session")
def quantized_checkpoint(harness_session):
    """Path of the quantized checkpoint (built once, then served from the content-addressed cache)."""
    return harness_session.checkpoint().path


@pytest.fixture(scope="session")
def harness_prepared(harness_session):
    """The prepare stage's result (harness.stages.results.Prepared): every dataset tokenized by its rules."""
    return harness_session.prepare_all()


@pytest.fixture(scope="session")
def harness_checkpoint(harness_session):
    """The provide stage's result (harness.stages.results.Checkpoint): path, scheme, cache_hit and build info."""
    return harness_session.checkpoint()


@pytest.fixture(scope="session")
def harness_scores(harness_session):
    """The score stage's result (harness.stages.results.Scores) for NVFP4: every dataset scored, the engine's info."""
    return harness_session.scores(NVFP4)


@pytest.fixture(scope="session")
def scoring_engine(harness_session):
    """``scoring_engine(precision="nvfp4")`` -> the started backend for that precision. One engine is alive at a
    time: asking for another precision closes (and frees) the current one first."""

    def get(precision: str = NVFP4):
        harness_session.start_engine(precision)
        return harness_session.engines.current

    return get
