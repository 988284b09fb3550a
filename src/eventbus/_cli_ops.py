"""The operator's commands: ``eventbus dead-letters list|show|replay|purge TARGET``,
``inspect``, ``groups [delete|reset G]``, ``graph`` and ``schema``.

They load the application's bus as ``eventbus worker`` does, but consume nothing: the
bus's subscribers only make its event types decodable. Exit codes: 0 done, 1 the
transport failed, 2 a usage error (or a purge without ``--yes``), 3 no such dead letter.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import anyio

from ._bus import EventBus
from ._deadletter import DeadLetter
from .transports._contract import GroupStats

__all__ = [
    "add_commands",
    "asyncapi",
    "dead_letters",
    "graph",
    "groups",
    "inspect_groups",
    "schema",
]

NOT_FOUND = 3
USAGE = 2
_DONE = {"replay": "replayed", "purge": "purged", "delete": "deleted", "reset": "reset"}


def add_commands(commands: Any) -> None:
    """Add ``dead-letters`` and ``graph`` to the ``eventbus`` parser."""
    dead = commands.add_parser("dead-letters", help="list, show, replay or purge dead letters")
    dead.add_argument("action", choices=["list", "show", "replay", "purge"])
    dead.add_argument("target", help="package.module:bus, as for worker")
    dead.add_argument("ids", nargs="*", help="dead-letter ids (show takes one)")
    dead.add_argument("--group", help="only this group's")
    dead.add_argument("--event", help="only this event name's")
    dead.add_argument("--reason", help="only this reason's (retries-exhausted, malformed, ...)")
    dead.add_argument("--older-than", type=float, metavar="SECONDS", help="failed that long ago")
    dead.add_argument("--json", action="store_true", help="JSON for scripts")
    dead.add_argument("--dry-run", action="store_true", help="say what replay or purge would do")
    dead.add_argument("--yes", action="store_true", help="confirm a purge")
    graph_parser = commands.add_parser("graph", help="a Mermaid flowchart of events and groups")
    graph_parser.add_argument("target", help="package.module:bus")
    look = commands.add_parser("inspect", help="what every group has waiting, in flight, ...")
    look.add_argument("target", help="package.module:bus")
    look.add_argument("--json", action="store_true", help="JSON for scripts")
    look.add_argument("--watch", type=float, metavar="SECONDS", help="again every SECONDS")
    groups = commands.add_parser("groups", help="list the groups, or delete or reset one")
    groups.add_argument("target", help="package.module:bus")
    groups.add_argument("action", nargs="?", choices=["list", "delete", "reset"], default="list")
    groups.add_argument("group", nargs="?", help="the group to delete or reset")
    groups.add_argument("--to", choices=["latest", "earliest"], default="latest")
    groups.add_argument("--json", action="store_true", help="JSON for scripts")
    groups.add_argument("--yes", action="store_true", help="confirm a delete or reset")
    schema = commands.add_parser("schema", help="the JSON Schema of every event, or AsyncAPI")
    schema.add_argument("target", help="package.module:bus")
    schema.add_argument("--format", choices=["json-schema", "asyncapi"], default="json-schema")


async def dead_letters(bus: EventBus, args: argparse.Namespace) -> int:
    """Run one ``dead-letters`` action on the started ``bus``; the exit code."""
    letters = _chosen(await bus.dead_letters(args.group), args)
    if args.action == "list":
        _print_list(letters, args.json)
        return 0
    if args.action == "show":
        if len(args.ids) != 1:
            print("eventbus dead-letters show: give one dead-letter id")
            return USAGE
        if not letters:
            print(f"eventbus dead-letters show: no dead letter {args.ids[0]}")
            return NOT_FOUND
        print(json.dumps(_details(letters[0]), indent=2) if args.json else _text(letters[0]))
        return 0
    ids = [letter.id for letter in letters]
    if args.dry_run or not ids:
        _say(f"would {args.action}" if args.dry_run else args.action, ids, args.json)
        return 0
    if args.action == "purge" and not args.yes:
        print(f"eventbus dead-letters purge: {len(ids)} dead letter(s) would go; add --yes")
        return USAGE
    act = bus.replay_dead_letters if args.action == "replay" else bus.purge_dead_letters
    done = await act(None, ids)
    _say(_DONE[args.action], ids[:done], args.json)
    return 0


async def inspect_groups(bus: EventBus, args: argparse.Namespace) -> int:
    """Print every group's state (again every ``--watch`` seconds, until interrupted)."""
    while True:
        await _print_groups(bus, args.json, ["event", "group", *_FIGURES])
        if args.watch is None:
            return 0
        sys.stdout.flush()
        await anyio.sleep(args.watch)


async def groups(bus: EventBus, args: argparse.Namespace) -> int:
    """List the groups, or delete or reset one (with ``--yes``)."""
    if args.action == "list":
        await _print_groups(bus, args.json, ["group", "event", *_FIGURES])
        return 0
    if not args.group:
        print(f"eventbus groups {args.action}: name the group")
        return USAGE
    if not args.yes:
        what = f"reset to {args.to}" if args.action == "reset" else "deleted"
        print(f"eventbus groups {args.action}: group {args.group} would be {what}; add --yes")
        return USAGE
    if args.action == "delete":
        count = await bus.delete_group(args.group)
    else:
        count = await bus.reset_group(args.group, args.to)
    if not count:
        print(f"eventbus groups {args.action}: no group {args.group}")
        return NOT_FOUND
    print(f"{_DONE[args.action]} group {args.group} on {count} event type(s)")
    return 0


def schema(bus: EventBus, fmt: str) -> str:
    """The JSON Schema of every event type of the bus, or an AsyncAPI 3.0 document."""
    types = {t.event_name: t for s in bus.subscribers for t in s.event_types}
    schemas = {name: t.model_json_schema() for name, t in sorted(types.items())}
    if fmt == "json-schema":
        return json.dumps(schemas, indent=2)
    return json.dumps(asyncapi(bus, schemas), indent=2)


def asyncapi(bus: EventBus, schemas: dict[str, Any]) -> dict[str, Any]:
    """An AsyncAPI 3.0 document: a channel and a message per event type, an operation
    per group that receives it (the envelope's fields as message headers)."""
    channels, operations, messages = {}, {}, {}
    for name, payload in schemas.items():
        ref = {"$ref": f"#/components/messages/{name}"}
        channels[name] = {"address": name, "messages": {name: ref}}
        messages[name] = {"name": name, "headers": _ENVELOPE, "payload": payload}
        operations[f"publish-{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
        }
    for sub in bus.subscribers:
        for event_type in sub.event_types:
            name = event_type.event_name
            operations[f"{sub.group}-{name}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{name}"},
                "summary": f"group {sub.group} ({sub.mode})",
            }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "eventbus events", "version": "1"},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


_ENVELOPE = {
    "type": "object",
    "required": ["id", "name", "version", "time"],
    "properties": {
        field: {"type": "string"}
        for field in ("id", "name", "version", "time", "correlation_id", "causation_id", "headers")
    },
}


def graph(bus: EventBus) -> str:
    """A Mermaid flowchart: an event node per event type, a group node per group, an
    arrow per subscription (dotted for immediate; urgent events marked)."""
    lines = ["flowchart LR"]
    events: dict[str, bool] = {}
    for sub in bus.subscribers:
        for event_type in sub.event_types:
            events[event_type.event_name] = event_type.event_urgent
    for name, urgent in sorted(events.items()):
        lines.append(f'    e_{_node(name)}["{name}{" (urgent)" if urgent else ""}"]')
    for group in sorted({s.group for s in bus.subscribers}):
        lines.append(f'    g_{_node(group)}(["{group}"])')
    for sub in bus.subscribers:
        arrow = "-. immediate .->" if sub.mode == "immediate" else "-->"
        for event_type in sub.event_types:
            lines.append(f"    e_{_node(event_type.event_name)} {arrow} g_{_node(sub.group)}")
    return "\n".join(lines)


def _node(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _chosen(letters: Sequence[DeadLetter], args: argparse.Namespace) -> list[DeadLetter]:
    """The letters that pass every filter given."""
    now = datetime.now(UTC)
    return [
        letter
        for letter in letters
        if (not args.ids or letter.id in args.ids)
        and (args.event is None or letter.headers.get("name") == args.event)
        and (args.reason is None or letter.reason == args.reason)
        and (
            args.older_than is None
            or (now - letter.last_failed_at).total_seconds() >= args.older_than
        )
    ]


def _summary(letter: DeadLetter) -> dict[str, Any]:
    """What a list shows of a dead letter (no payload: it may hold personal data)."""
    return {
        "id": letter.id,
        "group": letter.group,
        "event": letter.headers.get("name", "?"),
        "event_id": letter.headers.get("id", "?"),
        "reason": letter.reason,
        "attempts": letter.attempts,
        "last_failed_at": letter.last_failed_at.isoformat(),
        "error_type": letter.error_type,
    }


def _details(letter: DeadLetter) -> dict[str, Any]:
    """Everything about one dead letter, the payload included."""
    return {
        **_summary(letter),
        "handler": letter.handler,
        "error_message": letter.error_message,
        "first_failed_at": letter.first_failed_at.isoformat(),
        "headers": dict(letter.headers),
        "body": letter.body.decode("utf-8", errors="replace"),
        "traceback": letter.traceback,
    }


def _print_list(letters: Sequence[DeadLetter], as_json: bool) -> None:
    rows = [_summary(letter) for letter in letters]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    _print_table(rows, ["id", "group", "event", "reason", "attempts", "last_failed_at"])
    print(f"{len(rows)} dead letter(s)")


async def _print_groups(bus: EventBus, as_json: bool, columns: list[str]) -> None:
    """Every group's figures (``bus.inspect()``), as JSON or as a table of ``columns``."""
    rows = [_stats(s) for s in await bus.inspect()]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, columns)


def _print_table(rows: Sequence[dict[str, Any]], columns: list[str]) -> None:
    table = [columns] + [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


_FIGURES = ["waiting", "in_flight", "oldest_pending_s", "scheduled", "dead", "length", "consumers"]


def _stats(stats: GroupStats) -> dict[str, Any]:
    age = stats.oldest_pending_age
    return {
        "event": stats.topic,
        "group": stats.group,
        "waiting": stats.waiting,
        "in_flight": stats.in_flight,
        "oldest_pending_s": "-" if age is None else round(age, 3),
        "scheduled": stats.scheduled,
        "dead": stats.dead_letters,
        "length": "-" if stats.stream_length is None else stats.stream_length,
        "consumers": "-" if stats.consumers is None else stats.consumers,
        "idle_s": {name: round(seconds, 3) for name, seconds in stats.idle},
    }


def _text(letter: DeadLetter) -> str:
    details = _details(letter)
    trace = details.pop("traceback")
    lines = [f"{key}: {value}" for key, value in details.items()]
    return "\n".join([*lines, "traceback:", trace])


def _say(done: str, ids: Sequence[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"action": done, "ids": list(ids)}))
    else:
        print(f"{done} {len(ids)} dead letter(s)" + (f": {', '.join(ids)}" if ids else ""))
