import re

import numpy as np
import pytest

from compression.data.raw import RawSplit
from compression.data.subgroups import (attribute_ids, attribute_names, class_groups,
                                        frequency_groups, mapped_groups, population_weights)
from compression.errors import InvalidInput
from compression.spec import SubgroupSpec


def test_frequency_thirds_ten_classes():
    counts = [500, 300, 180, 108, 65, 39, 23, 14, 8, 5]
    table, names = frequency_groups(counts)
    assert names == ("head", "medium", "tail")
    # tail = rarest ceil(10/3) = 4; head = ceil(6/2) = 3; medium = 3
    assert table.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("counts, expected", [
    ([5, 50, 20], [2, 0, 1]),  # ranked by count, not by index
    ([7, 7], [0, 2]),  # tie: the lower index ranks as more frequent
    ([3, 9, 1, 4], [2, 0, 2, 1]),  # tail: 2 rarest (1, 3); head: 1 (9); medium: 4
    ([4], [2]),
])
def test_frequency_thirds_small(counts, expected):
    assert frequency_groups(counts)[0].tolist() == expected


def test_frequency_thresholds_name_empty_groups_too():
    table, names = frequency_groups([100, 50, 10, 11], head_min_count=100, tail_max_count=10)
    assert table.tolist() == [0, 1, 2, 1]
    table, names = frequency_groups([100, 100], head_min_count=50, tail_max_count=5)
    assert table.tolist() == [0, 0] and names == ("head", "medium", "tail")


def test_class_mode_and_dispatch():
    table, names = class_groups(SubgroupSpec(by="class"), ("a", "b"), [3, 1])
    assert table.tolist() == [0, 1] and names == ("a", "b")
    table, _ = class_groups(SubgroupSpec(by="frequency"), ("a", "b", "c"), [1, 9, 5])
    assert table.tolist() == [2, 0, 1]


def test_map_by_name_and_index_sorted_group_names():
    table, names = mapped_groups({"cat": "pets", "1": "wild", "eel": "pets"}, ("cat", "dog", "eel"))
    assert names == ("pets", "wild")
    assert table.tolist() == [0, 1, 0]


def test_map_lists_every_problem():
    with pytest.raises(InvalidInput) as err:
        mapped_groups({"cat": "a", "0": "b", "yak": "a", "7": "a"}, ("cat", "dog", "eel"))
    problems = err.value.problems
    assert any("'cat' is mapped to both 'a' and 'b'" in p for p in problems)
    assert any("'yak'" in p for p in problems) and any("'7'" in p for p in problems)
    assert any("['dog', 'eel']" in p for p in problems)


def _raw(attr, origin="f.npz"):
    n = 0 if attr is None else len(attr)
    return RawSplit(np.zeros((n, 1, 1, 1), np.uint8), np.zeros(n, np.int64),
                    None if attr is None else np.asarray(attr), ("c",), origin)


def test_attribute_names_sorted_as_strings_over_all_splits():
    names = attribute_names([_raw(["2", "10"]), _raw(["b", "2"])])
    assert names == ("10", "2", "b")
    assert attribute_ids(np.array(["b", "10", "2"]), names).tolist() == [2, 0, 1]


def test_attribute_missing_names_the_file():
    with pytest.raises(InvalidInput, match="test.npz has no group values"):
        attribute_names([_raw(["a"]), _raw(None, "test.npz")])


def test_population_shares_become_one_weight_per_cell():
    weights = population_weights({"clean": 0.95, "blur": 0.05}, ["clean", "blur"], [1400, 600])
    assert weights == pytest.approx((0.95, 0.05))
    assert population_weights({}, ["clean", "blur"], [1400, 600]) is None
    # shares within the spec's tolerance of 1 are rescaled; an unseen cell may go unnamed
    assert population_weights({"a": 0.333, "b": 0.333, "c": 0.333}, ["a", "b", "c", "d"],
                              [5, 5, 5, 0]) == pytest.approx((1 / 3, 1 / 3, 1 / 3, 0.0))


@pytest.mark.parametrize("shares, counts, message", [
    ({"clean": 0.9, "blurred": 0.1}, [10, 10], "names ['blurred'], which the data has not"),
    ({"clean": 1.0}, [10, 10], "no share for ['blur']"),
    ({"clean": 0.9, "blur": 0.1}, [10, 0], "['blur'], which has no holdout examples"),
])
def test_shares_that_do_not_fit_the_data_are_refused(shares, counts, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        population_weights(shares, ["clean", "blur"], counts)
