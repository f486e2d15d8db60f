"""Graded answers beside the proposal's yes/no (item 3): the scheme driver's version
ranges, cold rules, limits and exclusions, through a mount and its control socket."""
from __future__ import annotations

import errno

import pytest
from conftest import needs_fuse

from mdevfs.testing import mounted

pytestmark = needs_fuse
TOPOLOGY = """
[[parent]]
driver = "scheme"
[parent.options]
name = "acme"
format = "acme-{board}-{sw}.{minor}-{type}"
fields = { board = "A10", sw = 4, minor = 2 }
rules = { minor = "target>=source" }
ranges = { sw = [3, 5] }
cold_rules = { minor = "any" }
limits = { minor = "host_driver", sw = "guest_driver", board = "gpu" }
exclude = [{ field = "board", source = "A16", target = "A10" }]
[[parent.options.types]]
name = "small"
[[parent.options.types]]
name = "large"
"""
ATTR = "class/mdev_bus/acme/mdev_supported_types/acme-small/migration_version"


@pytest.fixture(scope="module")
def m(tmp_path_factory):
    config = tmp_path_factory.mktemp("graded") / "host.toml"
    config.write_text(TOPOLOGY)
    with mounted(config) as mount:
        yield mount


@pytest.mark.parametrize(("source", "result", "limit", "reason"), [
    ("acme-A10-4.1-small", "live", "none", "every rule holds"),
    ("acme-A10-5.2-small", "live", "none", "every rule holds"),
    ("acme-A10-4.3-small", "cold", "host_driver", "field minor: source 3, target 2, rule "
     "target>=source"),
    ("acme-A10-6.1-small", "none", "guest_driver", "field sw: source 6 is outside 3..5"),
    ("acme-A16-4.1-small", "none", "gpu", "field board: 'A16' never migrates to 'A10' "
     "(excluded)"),
    ("acme-A10-4.1-large", "none", "gpu", "field type: source 'large', target 'small', rule "
     "equal"),
    ("acme-4.1", "none", "other", "does not fit the format 'acme-{board}-{sw}.{minor}-{type}'"),
])
def test_grade_and_the_proposals_answer_agree(m, source, result, limit, reason):
    """``grade`` through the control socket; the proposal's write accepts exactly the live ones
    and refuses the others with the driver's errno and the same reason."""
    assert m.control.grade(ATTR, source) == {"result": result, "limit": limit, "reason": reason}
    start = m.control.reasons()["next"]
    if result == "live":
        assert m.write(ATTR, source) == len(source)
        return
    with pytest.raises(OSError) as refused:
        m.write(ATTR, source)
    assert refused.value.errno == errno.EINVAL
    if result == "cold" or limit != "other":
        assert [r["reason"] for r in m.control.reasons(since=start)["reasons"]] == [
            f"acme: {source!r} may not migrate to type small: {reason}"]


@pytest.mark.parametrize(("options", "problem"), [
    ({"ranges": {"board": [1, 2]}}, "option 'ranges.board' must be [min, max] of a whole-number "
     "field"),
    ({"ranges": {"sw": [5, 3]}}, "option 'ranges.sw' must be [min, max] of a whole-number field"),
    ({"limits": {"colour": "gpu"}}, "option 'limits' must be a table of field = component name"),
    ({"exclude": [{"field": "board", "source": "A16"}]},
     "option 'exclude' must be a list of { field, source, target } tables naming fields"),
    ({"cold_rules": {"minor": "sometimes"}}, "option 'cold_rules.minor': 'sometimes' is not one of "
     "equal, any, target>=source, target<=source, same-major-minor>="),
])
def test_bad_grading_options_are_refused_by_name(options, problem):
    from mdevfs_vendors.scheme import SchemeDriver

    base = {"name": "acme", "format": "acme-{board}-{sw}.{minor}-{type}",
            "fields": {"board": "A10", "sw": 4, "minor": 2}, "types": [{"name": "small"}]}
    with pytest.raises(ValueError) as refused:
        SchemeDriver({**base, **options})
    assert str(refused.value) == problem
