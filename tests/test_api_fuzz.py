"""Any JSON an operator posts as an event is either accepted or refused with a field error:
never an unexpected exception (which the API would turn into a 500), never a partial write."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from adrgate.services import make_engine
from vtn.eventjson import FieldError
from vtn.handlers import VtnConfig, VtnHandlers
from vtn.operator import Conflict, Operator
from vtn.store import VtnStore

from tests.vtnkit import utcnow

FIELDS = ["market_context", "dtstart", "duration", "signals", "targets", "priority", "test_event",
          "response_required", "start_after", "notification", "ramp_up", "recovery",
          "vtn_comment", "event_id", "signal_name", "signal_type", "intervals", "payload",
          "item_base", "kind", "units", "description", "ven_ids", "group_ids"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["SIMPLE", "level", "PT1H", "PT0S", "-PT5M", "P",
                                           "2030-01-01T00:00:00Z", "2030-13-01", "price",
                                           "LOAD_DISPATCH", "setpoint", "always", "powerReal"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5),
                                            inner, max_size=6)),
    max_leaves=25,
)


NEAR_VALID_BASE = {"market_context": "http://dso.example/flex",
                   "dtstart": (utcnow() + timedelta(hours=1)).isoformat(),
                   "signals": [{"signal_name": "SIMPLE", "signal_type": "level",
                                "intervals": [{"duration": "PT30M", "payload": 1}]}]}


def near_valid() -> st.SearchStrategy[dict[str, Any]]:
    """A valid event with one field replaced by arbitrary JSON: reaches the deeper checks."""
    return st.builds(lambda key, value: {**NEAR_VALID_BASE, key: value}, st.sampled_from(FIELDS),
                     json_values)


STORE = VtnStore(make_engine("sqlite://"))
STORE.create_schema()
_ids = itertools.count()
OPERATOR = Operator(STORE, VtnConfig(), VtnHandlers(STORE, VtnConfig(), lambda: "x"),
                    new_id=lambda: f"event-{next(_ids)}")
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), json_values, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(bodies, near_valid()))
# found by this property: a duration in seconds too large for a timedelta
@example({**NEAR_VALID_BASE, "start_after": 86400000000000.0})
def test_event_json_is_accepted_or_refused_with_a_field(body: dict[str, Any]) -> None:
    before = len(STORE.list_events())
    try:
        rec = OPERATOR.create_event(body, utcnow())
    except (FieldError, Conflict) as exc:
        event(f"refused: {type(exc).__name__}")
        assert len(STORE.list_events()) == before
        return
    event("accepted")
    assert STORE.get_event(rec.event.event_id) is not None
