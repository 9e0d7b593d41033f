"""Any schema-valid message, from a registered VEN or not, is answered or refused with an
OpenADR error: handlers raise nothing else (which the view would have to answer 469)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adrgate.services import make_engine
from oadr.errors import AdrError
from oadr.messages import Message
from vtn.handlers import Ctx, VtnConfig, VtnHandlers
from vtn.records import VenRecord, VenStatus
from vtn.store import VtnStore

from tests.test_codec_properties import MESSAGES
from tests.vtnkit import utcnow

STORE = VtnStore(make_engine("sqlite://"))
STORE.create_schema()
STORE.save_ven(VenRecord(ven_id="VEN-1", ven_name="ven-1", status=VenStatus.REGISTERED,
                         registration_id="REG-1"))
_ids = itertools.count()
HANDLERS = VtnHandlers(STORE, VtnConfig(), lambda: f"id-{next(_ids)}")


def as_registered(msg: Message) -> Message:
    """Half the time, speak as the registered VEN so the handlers go past authentication."""
    if any(f.name == "ven_id" for f in dataclasses.fields(msg)):  # type: ignore[arg-type]
        return dataclasses.replace(msg, ven_id="VEN-1")  # type: ignore[type-var]
    return msg


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES, st.booleans())
def test_handlers_raise_only_openadr_errors(msg: Message, registered: bool) -> None:
    if registered:
        msg = as_registered(msg)
    try:
        reply = asyncio.run(HANDLERS.dispatch(msg, Ctx(now=utcnow())))
    except AdrError as exc:
        event(f"refused {exc.code}")
        return
    event(f"answered {type(reply).__name__}")
