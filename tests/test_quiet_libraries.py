"""-q silences the progress bars transformers and diffusers draw while loading weights, and only for the load."""

import pytest

from aesthetic_audit import ui

hf_logging = pytest.importorskip("transformers.utils.logging")


@pytest.fixture
def verbosity():
    before = ui._state["verbosity"]
    yield
    ui.configure(before)


def test_quiet_turns_transformers_bar_off_for_the_block_and_restores_it(verbosity):
    ui.configure(0)
    hf_logging.enable_progress_bar()
    with ui.quiet_libraries():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()


def test_restored_after_an_exception(verbosity):
    ui.configure(0)
    hf_logging.enable_progress_bar()
    with pytest.raises(RuntimeError):
        with ui.quiet_libraries():
            raise RuntimeError("load failed")
    assert hf_logging.is_progress_bar_enabled()


def test_normal_verbosity_leaves_the_bar_alone(verbosity):
    ui.configure(1)
    hf_logging.enable_progress_bar()
    with ui.quiet_libraries():
        assert hf_logging.is_progress_bar_enabled()


def test_a_bar_the_user_turned_off_stays_off(verbosity):
    ui.configure(0)
    hf_logging.disable_progress_bar()
    try:
        with ui.quiet_libraries():
            assert not hf_logging.is_progress_bar_enabled()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
