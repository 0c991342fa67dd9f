"""The rules that name a version's state, as a table (edged.states.version_state)."""

from __future__ import annotations

import pytest

from edged.states import DEFERRED_REASON, INCOMPLETE_REASON, VersionState, version_state

S = VersionState

# facts → (state, reason); the first rule that holds wins, so each row adds the facts an
# earlier rule would otherwise decide on.
TABLE = [
    ({"serving": True}, S.SERVING, ""),
    ({"serving": True, "on_probation": True}, S.PROBATION, ""),
    ({"serving": True, "bad": "why", "committed": True}, S.SERVING, ""),  # what serves is what serves
    ({"serving": False, "bad": "nan outputs"}, S.BAD, "nan outputs"),
    ({"serving": False, "bad": "b", "rejected": "r", "previous": True}, S.BAD, "b"),
    ({"serving": False, "rejected": "golden mismatch"}, S.REJECTED, "golden mismatch"),
    ({"serving": False, "rejected": "r", "previous": True}, S.REJECTED, "r"),
    ({"serving": False, "previous": True}, S.PREVIOUS, ""),
    ({"serving": False, "previous": True, "complete": lambda: False}, S.PREVIOUS, ""),
    ({"serving": False, "complete": lambda: False}, S.INCOMPLETE, INCOMPLETE_REASON),
    ({"serving": False, "complete": lambda: False, "committed": True}, S.INCOMPLETE, INCOMPLETE_REASON),
    ({"serving": False, "committed": True}, S.COMMITTED, ""),
    ({"serving": False, "committed": True, "load_error": "e"}, S.COMMITTED, ""),
    ({"serving": False, "load_error": "does not load"}, S.REJECTED, "does not load"),
    ({"serving": False, "load_error": "e", "deferred": True}, S.REJECTED, "e"),
    ({"serving": False, "deferred": True}, S.AVAILABLE, DEFERRED_REASON),
    ({"serving": False}, S.AVAILABLE, ""),
]


@pytest.mark.parametrize("facts, state, reason", TABLE)
def test_version_state_table(facts, state, reason):
    assert version_state(**facts) == (state, reason)


def test_completeness_is_only_asked_when_earlier_rules_do_not_decide():
    def walk() -> bool:
        raise AssertionError("complete() called for a serving version")

    assert version_state(serving=True, complete=walk) == (S.SERVING, "")
    assert version_state(serving=False, bad="b", complete=walk) == (S.BAD, "b")
