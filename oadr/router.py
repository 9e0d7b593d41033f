"""Route messages to handler methods by message type, like ocpp's `@on`.

Rules of this file:
- The route table is built per class in `__init_subclass__`, never in a module-level list.
- A handler declares the message class it takes and the classes it may return; the router checks
  the returned value and raises `InternalError` naming the handler otherwise (a bug, never sent).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, TypeVar

from .errors import LocalAdrError, NotRecognized

Ctx = TypeVar("Ctx")
_ROUTE = "__oadr_route__"


class InternalError(LocalAdrError):
    """A handler broke its contract (wrong return type): our bug."""


def on(message_type: type, *returns: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a coroutine method as the handler of `message_type`, returning one of `returns`."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, _ROUTE, (message_type, returns))
        return fn

    return mark


class Router(Generic[Ctx]):
    routes: ClassVar[dict[type, tuple[str, tuple[type, ...]]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table = dict(getattr(cls, "routes", {}))
        for name, member in vars(cls).items():
            route = getattr(member, _ROUTE, None)
            if route is not None:
                table[route[0]] = (name, route[1])
        cls.routes = table

    async def dispatch(self, msg: object, ctx: Ctx) -> Any:
        """Call the handler for `type(msg)`.

        Raises:
            NotRecognized: no handler for this message type here (453).
            InternalError: the handler returned a value of a type it did not declare.
        """
        try:
            name, returns = self.routes[type(msg)]
        except KeyError:
            raise NotRecognized(f"{type(msg).__name__} is not accepted here") from None
        handler: Callable[[Any, Ctx], Awaitable[Any]] = getattr(self, name)
        result = await handler(msg, ctx)
        if not isinstance(result, returns):
            raise InternalError(
                f"{type(self).__name__}.{name} returned {type(result).__name__}, "
                f"expected one of {[r.__name__ for r in returns]}"
            )
        return result
