"""The lab experiments ``test_lab_reproduce.py`` leaves out (those at even positions of
``reproduce.NAMES``) in smoke mode: a second file, so that a second test worker runs them."""

import pytest

from opd_jax.lab import reproduce as RP
from reproduce_smoke import check_experiment, dirs, records  # noqa: F401 (fixtures)


@pytest.mark.parametrize("name", RP.NAMES[0::2])
def test_every_experiment_runs_in_smoke_mode_and_stores_its_verdict(name, dirs, records):
    check_experiment(name, dirs, records)


def test_the_two_files_cover_every_experiment_once():
    assert sorted(RP.NAMES[0::2] + RP.NAMES[1::2]) == sorted(RP.NAMES)
