"""``Subscriber``: a handler plus its delivery options, and how its event types are found."""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import ConfigurationError
from ._event import Event
from ._options import check_start
from ._retry import RetryPolicy

__all__ = ["Handler", "Mode", "Subscriber", "make_subscriber"]

Mode = Literal["background", "immediate"]
Handler = Callable[..., Awaitable[None]]

_GROUP = re.compile(r"[^\s{}]{1,200}")


@dataclass(frozen=True, slots=True, eq=False)
class Subscriber:
    """One handler and its options, as declared with ``@registry.subscribe``.

    - ``event_types``: the event classes it takes (from the first parameter's annotation).
    - ``group``: the unit of delivery; ``name``: the handler's qualified name for logs.
    - ``takes_context``: whether the handler has a second parameter for the ``Context``.
    - ``idempotent``: a delivery of an event id the group already handled is acked
      without calling the handler.
    - ``start``: where a new group begins: ``"earliest"`` (every message the transport
      keeps) or ``"latest"`` (messages published from its creation on).
    - ``group_given``: whether ``group=`` was given (False: derived from the handler's
      module and name, which a durable transport refuses).
    """

    handler: Handler
    event_types: tuple[type[Event], ...]
    group: str
    retry: RetryPolicy
    concurrency: int
    timeout: float | None
    mode: Mode
    takes_context: bool
    name: str
    idempotent: bool = False
    start: str = "earliest"
    group_given: bool = True


def make_subscriber(
    handler: Handler,
    *,
    group: str | None,
    retry: RetryPolicy | None,
    concurrency: int,
    timeout: float | None,
    mode: str,
    idempotent: bool = False,
    start: str = "earliest",
) -> Subscriber:
    """Check a handler and its options and build its ``Subscriber``.

    Raises ``ConfigurationError`` (a ``TypeError``) naming the handler and the problem.
    """
    name = f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', handler)}"
    if not inspect.iscoroutinefunction(handler):
        raise ConfigurationError(f"handler {name} must be an `async def` function")
    params = _positional_params(handler, name)
    group_given = group is not None
    group = name if group is None else group
    if not isinstance(group, str) or not _GROUP.fullmatch(group):
        raise ConfigurationError(
            f"group {group!r} of {name} must be 1-200 characters without spaces or braces"
        )
    if retry is None:
        retry = RetryPolicy()
    elif not isinstance(retry, RetryPolicy):
        raise ConfigurationError(f"retry= of {name} must be a RetryPolicy")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"concurrency= of {name} must be an int >= 1")
    if timeout is not None and not _positive_seconds(timeout):
        raise ConfigurationError(f"timeout= of {name} must be a number of seconds > 0")
    if mode not in ("background", "immediate"):
        raise ConfigurationError(f"mode= of {name} must be 'background' or 'immediate'")
    if not isinstance(idempotent, bool):
        raise ConfigurationError(f"idempotent= of {name} must be True or False")
    if idempotent and mode != "background":
        raise ConfigurationError(
            f"idempotent=True of {name} needs mode='background': an immediate subscriber "
            "runs once per publish() call"
        )
    start = check_start(start, f"start= of {name}")
    return Subscriber(
        handler=handler,
        event_types=_event_types(handler, params[0], name),
        group=group,
        retry=retry,
        concurrency=concurrency,
        timeout=None if timeout is None else float(timeout),
        mode=typing.cast(Mode, mode),
        takes_context=len(params) == 2,
        name=name,
        idempotent=idempotent,
        start=start,
        group_given=group_given,
    )


def _positive_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _positional_params(handler: Handler, name: str) -> list[inspect.Parameter]:
    """The handler's required positional parameters: the event, then maybe the context."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = list(inspect.signature(handler).parameters.values())
    required = [p for p in params if p.default is inspect.Parameter.empty]
    positional = [p for p in required if p.kind in kinds]
    others = [
        p
        for p in required
        if p.kind not in kinds
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if not 1 <= len(positional) <= 2 or others or positional != required[: len(positional)]:
        raise ConfigurationError(
            f"handler {name} must take the event, and optionally a context: "
            "`async def handler(event: MyEvent, context: Context) -> None`"
        )
    return positional


def _event_types(handler: Handler, param: inspect.Parameter, name: str) -> tuple[type[Event], ...]:
    annotation = _resolve(handler, param)
    if annotation is inspect.Parameter.empty:
        raise ConfigurationError(
            f"handler {name}: annotate its first parameter with the Event subclass it takes"
        )
    members: tuple[Any, ...] = (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
    for member in members:
        if not (isinstance(member, type) and issubclass(member, Event)) or member is Event:
            raise ConfigurationError(
                f"handler {name}: the annotation of its first parameter must be an Event "
                f"subclass or a union of them, not {member!r}"
            )
    return tuple(dict.fromkeys(members))


def _resolve(handler: Handler, param: inspect.Parameter) -> Any:
    """The first parameter's annotation, evaluated when it is a string.

    Only this annotation is evaluated, so that the context's type may be imported under
    ``if TYPE_CHECKING:``.
    """
    annotation = param.annotation
    if not isinstance(annotation, str):
        return annotation
    namespace = dict(getattr(handler, "__globals__", {}))
    try:
        return eval(annotation, namespace)  # the handler's own source, as get_type_hints does
    except NameError as exc:
        name = getattr(handler, "__qualname__", repr(handler))
        raise ConfigurationError(
            f"handler {name}: the annotation {annotation!r} of its first parameter names "
            f"{exc.name!r}, which is not defined in {getattr(handler, '__module__', '?')} "
            "(a local class, or one imported only under TYPE_CHECKING?)"
        ) from None
    except Exception:
        return annotation
