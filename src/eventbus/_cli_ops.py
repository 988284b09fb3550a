"""The operator's commands: ``eventbus dead-letters list|show|replay|purge TARGET`` and
``eventbus graph TARGET``.

They load the application's bus as ``eventbus worker`` does, but consume nothing: the
bus's subscribers only make its event types decodable. Exit codes: 0 done, 1 the
transport failed, 2 a usage error (or a purge without ``--yes``), 3 no such dead letter.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ._bus import EventBus
from ._deadletter import DeadLetter

__all__ = ["add_commands", "dead_letters", "graph"]

NOT_FOUND = 3
USAGE = 2
_DONE = {"replay": "replayed", "purge": "purged"}


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
    columns = ["id", "group", "event", "reason", "attempts", "last_failed_at", "error_type"]
    table = [columns] + [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    print(f"{len(rows)} dead letter(s)")


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
