"""``editstore replay``: drive a daemon with sessions built from real data.

Each session goes through the agent's stages as `StateWriter` updates
(analysis, intent, refinement iterations, editing, validation, completion)
and stores its entities, prompts, validation and feedback. Then the replay
reads everything back and prints, for each kind of record, how many it sent,
how many are stored and how many of those are equal to what was sent::

    editstore replay --start-daemon --database sqlite:////tmp/replay.db \\
        --instructpix2pix data/instructpix2pix-human-edits.jsonl \\
        --gier data/gier-test-requests.json --coco data/coco-39769 \\
        --limit 20 --restart-daemon-every 7

With ``--restart-daemon-every N`` the replay kills its daemon with SIGKILL
after every N sessions, while the next session's calls are in flight, and
starts it again. The client's retries with request ids must still leave
nothing lost and nothing doubled. The exit code is 0 when every count
agrees, 1 when anything differs and 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import pathlib
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from editstore.client import jsondoc
from editstore.client.client import Client
from editstore.client.errors import EditstoreError
from editstore.client.models import ResumedSession, Session, SessionStatus
from editstore.client.replay_daemon import DaemonProcess, Restarter, free_port
from editstore.client.replay_data import (
    SessionPlan,
    load_coco,
    load_gier,
    load_instructpix2pix,
    plan_sessions,
)
from editstore.client.settings import RetryPolicy
from editstore.client.writer import StateWriter

__all__ = ["add_arguments", "main", "run"]

logger = logging.getLogger(__name__)

KINDS = ("sessions", "prompts", "entities", "validations", "feedback", "states")
KIND_TITLES = {
    "sessions": "sessions",
    "prompts": "prompts",
    "entities": "entities",
    "validations": "validations",
    "feedback": "feedback",
    "states": "state documents",
}

# A daemon restart takes a few seconds on a loaded machine; calls wait for it.
REPLAY_RETRY = RetryPolicy(
    max_attempts=60, initial_backoff=0.05, max_backoff=1.0, max_elapsed=120.0
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``editstore replay`` to ``parser``."""
    target = parser.add_argument_group("daemon")
    target.add_argument(
        "--address",
        help="host:port of a running daemon to replay into",
    )
    target.add_argument(
        "--start-daemon",
        action="store_true",
        help="start a daemon on a free port of 127.0.0.1 for the run",
    )
    target.add_argument(
        "--database",
        help="database URL of the started daemon, e.g. sqlite:////tmp/replay.db "
        "(default: a SQLite file in a temporary folder)",
    )
    target.add_argument(
        "--restart-daemon-every",
        type=int,
        metavar="N",
        help="kill the started daemon with SIGKILL after every N sessions and "
        "start it again",
    )
    target.add_argument(
        "--daemon-log",
        type=pathlib.Path,
        help="file for the started daemon's output (default: in a temporary folder)",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--instructpix2pix",
        type=pathlib.Path,
        metavar="FILE",
        help="InstructPix2Pix human edits, JSON lines of input, edit, output",
    )
    data.add_argument(
        "--gier",
        type=pathlib.Path,
        metavar="FILE",
        help="GIER requests, a JSON list with request and summaries",
    )
    data.add_argument(
        "--coco",
        type=pathlib.Path,
        metavar="DIR",
        help="folder of a COCO photo and its annotations.json; its objects "
        "become every session's entities",
    )
    data.add_argument(
        "--limit", type=int, metavar="N", help="replay at most N sessions"
    )

    agent = parser.add_argument_group("agent")
    agent.add_argument(
        "--flush-interval",
        type=float,
        default=5.0,
        help="seconds between the state writer's sends (default: 5)",
    )
    agent.add_argument(
        "--journal-dir",
        type=pathlib.Path,
        help="keep each session's state journal in this folder",
    )
    agent.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="deadline of each call attempt in seconds (default: 10)",
    )
    agent.add_argument("--seed", type=int, default=0, help="seed of the restart delays")

    parser.add_argument(
        "--json", action="store_true", help="print the table as a JSON object"
    )


@dataclass
class SentSession:
    """The records sent for one session, to compare with the stored ones."""

    session: Session
    plan: SessionPlan
    prompts: list[dict[str, Any]] = field(default_factory=list)
    entities: list[dict[str, Any]] = field(default_factory=list)
    validations: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)
    state_batches: int = 0
    final_alignment_score: float | None = None


@dataclass
class Count:
    sent: int = 0
    stored: int = 0
    equal: int = 0

    @property
    def agrees(self) -> bool:
        return self.sent == self.stored == self.equal


class Agent:
    """Plays one session the way the image-editing agent would."""

    def __init__(self, client: Client, args: argparse.Namespace) -> None:
        self.client = client
        self.args = args

    def play(self, plan: SessionPlan) -> SentSession:
        client = self.client
        session = client.create_session(plan.image_path, plan.naive_prompt)
        assert session.id is not None
        sent = SentSession(session=session, plan=plan)
        journal = None
        if self.args.journal_dir is not None:
            journal = self.args.journal_dir / f"{session.id}.json"
        writer = StateWriter(
            client,
            session.id,
            flush_interval=self.args.flush_interval,
            journal_path=journal,
            exit_timeout=REPLAY_RETRY.max_elapsed,
        )
        try:
            self._stages(plan, sent, writer)
        finally:
            if not writer.close(timeout=REPLAY_RETRY.max_elapsed):
                logger.error("state of session %s not all sent", session.id)
            sent.state_batches = writer.acknowledged_batches
        return sent

    def _update(
        self, sent: SentSession, writer: StateWriter, patch: dict[str, Any]
    ) -> None:
        writer.update(patch)
        sent.document = jsondoc.apply_merge_patch(sent.document, patch)

    def _stages(
        self, plan: SessionPlan, sent: SentSession, writer: StateWriter
    ) -> None:
        client = self.client
        session_id = sent.session.id
        assert session_id is not None
        self._update(
            sent,
            writer,
            {
                "session_id": session_id,
                "current_stage": "analysis",
                "image_path": plan.image_path,
                "naive_prompt": plan.naive_prompt,
            },
        )
        if plan.entities:
            stored = client.batch_create_entities(session_id, plan.entities)
            sent.entities = [_entity_fields(entity) for entity in stored]
        self._update(
            sent,
            writer,
            {
                "scene_analysis": {
                    "entities": [entity.entity_id for entity in plan.entities],
                    "spatial_layout": plan.spatial_layout,
                }
            },
        )

        self._update(
            sent,
            writer,
            {
                "current_stage": "intent",
                "intent": {
                    "target_entities": plan.target_entities,
                    "edit_type": plan.edit_type,
                    "confidence": plan.intent_confidence,
                },
            },
        )

        self._update(sent, writer, {"current_stage": "refinement"})
        for prompt in plan.prompts:
            created = client.create_prompt(
                session_id,
                prompt.iteration,
                positive_prompt=prompt.positive_prompt,
                negative_prompt=prompt.negative_prompt,
                quality_score=prompt.quality_score,
            )
            sent.prompts.append(_prompt_fields(created))
            self._update(
                sent,
                writer,
                {
                    "prompts": {
                        f"iteration_{prompt.iteration}": {
                            "positive": prompt.positive_prompt,
                            "negative": prompt.negative_prompt,
                            "quality_score": prompt.quality_score,
                        }
                    }
                },
            )

        final = plan.prompts[-1]
        self._update(
            sent,
            writer,
            {
                "prompts": {
                    "final": {
                        "positive": final.positive_prompt,
                        "negative": final.negative_prompt,
                    }
                }
            },
        )
        self._update(
            sent,
            writer,
            {
                "current_stage": "editing",
                "edited_image_path": f"edited/{session_id}.png",
            },
        )

        modified = len(plan.target_entities)
        validation = client.create_validation(
            session_id,
            0,
            alignment_score=plan.alignment_score,
            preserved_count=len(plan.entities) - modified,
            modified_count=modified,
            unintended_count=plan.unintended_count,
            user_feedback=plan.comments,
        )
        sent.validations.append(_validation_fields(validation))
        self._update(
            sent,
            writer,
            {
                "current_stage": "validation",
                "validation": {
                    "score": plan.alignment_score,
                    "delta": {
                        "preserved": len(plan.entities) - modified,
                        "modified": modified,
                        "unintended": plan.unintended_count,
                    },
                },
            },
        )

        feedback = client.create_user_feedback(
            session_id,
            plan.feedback_type,
            comments=plan.comments,
            rating=plan.rating,
        )
        sent.feedback.append(_feedback_fields(feedback))

        client.update_session(
            session_id,
            status=SessionStatus.COMPLETED,
            final_alignment_score=plan.alignment_score,
        )
        sent.final_alignment_score = plan.alignment_score
        self._update(
            sent, writer, {"current_stage": "completed", "status": "completed"}
        )


def _entity_fields(entity: Any) -> dict[str, Any]:
    return entity.model_dump(exclude={"id", "session_id"})


def _prompt_fields(prompt: Any) -> dict[str, Any]:
    return prompt.model_dump(exclude={"id", "create_time"})


def _validation_fields(validation: Any) -> dict[str, Any]:
    return validation.model_dump(exclude={"id", "create_time"})


def _feedback_fields(feedback: Any) -> dict[str, Any]:
    return feedback.model_dump(exclude={"id", "create_time"})


def _count_equal(sent: list[dict[str, Any]], stored: list[dict[str, Any]]) -> int:
    """Count stored records equal to a sent one, each sent one matched once."""
    remaining = list(sent)
    equal = 0
    for record in stored:
        if record in remaining:
            remaining.remove(record)
            equal += 1
    return equal


def compare(
    client: Client, sent_sessions: list[SentSession], started: datetime.datetime
) -> dict[str, Count]:
    """Read back every session and count what is stored and equal."""
    counts = {kind: Count() for kind in KINDS}
    sent_ids = {sent.session.id for sent in sent_sessions}
    stored_sessions = list(client.iter_sessions(created_after=started))
    counts["sessions"].sent = len(sent_sessions)
    counts["sessions"].stored = len(stored_sessions)
    by_id = {session.id: session for session in stored_sessions}
    for sent in sent_sessions:
        assert sent.session.id is not None
        stored = by_id.get(sent.session.id)
        if stored is not None and (
            stored.image_path == sent.plan.image_path
            and stored.naive_prompt == sent.plan.naive_prompt
            and stored.status == SessionStatus.COMPLETED
            and stored.final_alignment_score == sent.final_alignment_score
        ):
            counts["sessions"].equal += 1
        resumed: ResumedSession = client.resume_session(sent.session.id)
        pairs = {
            "prompts": (sent.prompts, [_prompt_fields(p) for p in resumed.prompts]),
            "entities": (sent.entities, [_entity_fields(e) for e in resumed.entities]),
            "validations": (
                sent.validations,
                [_validation_fields(v) for v in resumed.validations],
            ),
            "feedback": (
                sent.feedback,
                [_feedback_fields(f) for f in resumed.user_feedback],
            ),
        }
        for kind, (sent_records, stored_records) in pairs.items():
            counts[kind].sent += len(sent_records)
            counts[kind].stored += len(stored_records)
            counts[kind].equal += _count_equal(sent_records, stored_records)
        counts["states"].sent += 1
        state = resumed.state
        if state.version > 0:
            counts["states"].stored += 1
        # A batch applied twice would add a version without changing the
        # document, so the version count must match the batches sent too.
        if state.document == sent.document and state.version == sent.state_batches:
            counts["states"].equal += 1
    stray = [session.id for session in stored_sessions if session.id not in sent_ids]
    if stray:
        logger.error("sessions stored but not sent: %s", ", ".join(map(str, stray)))
    return counts


def format_table(counts: dict[str, Count]) -> str:
    """Return the counts as a text table, one line per kind."""
    lines = [f"{'kind':<16} {'sent':>8} {'stored':>8} {'equal':>8}"]
    for kind in KINDS:
        count = counts[kind]
        mark = "" if count.agrees else "  DIFFERS"
        lines.append(
            f"{KIND_TITLES[kind]:<16} {count.sent:>8} {count.stored:>8} "
            f"{count.equal:>8}{mark}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``editstore replay`` with parsed arguments; return the exit code."""
    error = _check_arguments(args)
    if error:
        print(f"editstore replay: error: {error}", file=sys.stderr)
        return 2
    ip2p = load_instructpix2pix(args.instructpix2pix) if args.instructpix2pix else []
    gier = load_gier(args.gier) if args.gier else []
    photo = load_coco(args.coco) if args.coco else None
    plans = plan_sessions(ip2p, gier, photo, args.limit)
    if not plans:
        print(
            "editstore replay: error: no requests found in the data files",
            file=sys.stderr,
        )
        return 2

    with tempfile.TemporaryDirectory(prefix="editstore-replay-") as scratch:
        daemon = None
        address = args.address
        if args.start_daemon:
            database = args.database or f"sqlite:///{pathlib.Path(scratch, 'r.db')}"
            log_path = args.daemon_log or pathlib.Path(scratch, "daemon.log")
            daemon = DaemonProcess(database, free_port(), log_path)
            daemon.start()
            address = daemon.address
        try:
            return _replay(args, address, plans, daemon)
        finally:
            if daemon is not None:
                daemon.stop()


def _check_arguments(args: argparse.Namespace) -> str | None:
    if bool(args.address) == bool(args.start_daemon):
        return "give exactly one of --address and --start-daemon"
    if args.database and not args.start_daemon:
        return "--database needs --start-daemon"
    if args.restart_daemon_every is not None:
        if not args.start_daemon:
            return "--restart-daemon-every needs --start-daemon"
        if args.restart_daemon_every < 1:
            return "--restart-daemon-every must be at least 1"
    if args.limit is not None and args.limit < 1:
        return "--limit must be at least 1"
    if not (args.instructpix2pix or args.gier):
        return "give --instructpix2pix or --gier (or both)"
    for option in ("instructpix2pix", "gier"):
        path = getattr(args, option)
        if path is not None and not path.is_file():
            return f"--{option} {path}: file not found"
    if args.coco is not None and not (args.coco / "annotations.json").is_file():
        return f"--coco {args.coco}: annotations.json not found"
    if args.journal_dir is not None:
        args.journal_dir.mkdir(parents=True, exist_ok=True)
    return None


def _replay(
    args: argparse.Namespace,
    address: str,
    plans: list[SessionPlan],
    daemon: DaemonProcess | None,
) -> int:
    restarter = None
    if daemon is not None and args.restart_daemon_every:
        restarter = Restarter(daemon, seed=args.seed)
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    clock = time.monotonic()
    sent_sessions: list[SentSession] = []
    failures = 0
    with Client(address, timeout=args.timeout, retry=REPLAY_RETRY) as client:
        agent = Agent(client, args)
        for number, plan in enumerate(plans, start=1):
            try:
                sent_sessions.append(agent.play(plan))
            except EditstoreError as error:
                failures += 1
                print(f"session from {plan.source} failed: {error}", file=sys.stderr)
            if restarter is not None and number % args.restart_daemon_every == 0:
                restarter.restart_soon()
        if restarter is not None:
            # One more crash before reading back: what is read must have
            # survived a SIGKILL.
            restarter.restart_now()
        counts = compare(client, sent_sessions, started)
    elapsed = time.monotonic() - clock
    restarts = restarter.restarts if restarter is not None else 0
    restart_errors = len(restarter.errors) if restarter is not None else 0
    agrees = all(count.agrees for count in counts.values())
    ok = agrees and failures == 0 and restart_errors == 0
    if args.json:
        report = {
            kind: {"sent": c.sent, "stored": c.stored, "equal": c.equal}
            for kind, c in counts.items()
        }
        summary = {
            "counts": report,
            "sessions_failed": failures,
            "daemon_restarts": restarts,
            "seconds": round(elapsed, 3),
            "ok": ok,
        }
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(counts))
        print(
            f"{len(plans)} sessions replayed in {elapsed:.1f} s, "
            f"{failures} failed, daemon restarted {restarts} times"
        )
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the replay as its own program: ``python -m editstore.client.replay``."""
    parser = argparse.ArgumentParser(
        prog="editstore replay",
        description="Replay real editing requests into a daemon and check that "
        "everything sent is stored once.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
