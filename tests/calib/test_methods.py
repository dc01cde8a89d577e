"""The calibration methods as data: each names a transform and a prior that the pipeline knows."""
import pytest

from faircalib.calib.methods import METHODS, Method, get_method


def test_every_method_is_found_by_name_and_says_what_it_needs():
    assert {name: (m.learns, m.needs_probe) for name, m in METHODS.items()} == {
        "rtn": (False, False), "quarot": (False, False), "flatquant": (True, False), "fair": (True, True),
        "fair-frontier": (True, True), "fair-masked": (True, True)}
    assert all(get_method(name) is method for name, method in METHODS.items())


@pytest.mark.parametrize("transform, prior", [("hadamrd", "none"), ("learned", "frontiers")])
def test_an_unknown_transform_or_prior_is_refused(transform, prior):
    with pytest.raises(ValueError, match="a transform is one of"):
        Method("typo", transform, prior)
