"""Sessions for ``editstore replay``, built from real editing requests.

Three public data sets give the parts of a session:

- InstructPix2Pix human edits (JSON lines of ``input``, ``edit``,
  ``output``): the ``edit`` is the naive prompt, and the ``output`` caption
  the refined prompt;
- GIER requests, a JSON list: the ``request`` is the naive prompt, and the
  detailed request and the expert and amateur summaries are the
  refinements. ``detailed_request`` is often a bare ``NaN`` token, which
  Python's ``json`` accepts and this module reads as missing;
- a COCO photo with its annotations: the photo is the session's image and
  each annotated object an entity (``cat_0``, ``remote_1``, ...).

What the replay adds itself (intent, scores, feedback) is derived from the
text by fixed rules, so that two runs over the same input send the same
records.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from dataclasses import dataclass
from typing import Any

from editstore.client.models import BoundingBox, Entity, FeedbackType

__all__ = [
    "CocoPhoto",
    "PromptPlan",
    "SessionPlan",
    "load_coco",
    "load_gier",
    "load_instructpix2pix",
    "plan_sessions",
]

MAX_ITERATIONS = 8
STYLE_WORDS = frozenset(
    {"style", "painting", "art", "muralism", "cartoon", "sketch", "watercolor"}
)


@dataclass(frozen=True)
class CocoPhoto:
    """A photo and the entities of its COCO annotations."""

    image_path: str
    width: int
    height: int
    entities: list[Entity]


@dataclass(frozen=True)
class PromptPlan:
    iteration: int
    positive_prompt: str
    negative_prompt: str
    quality_score: float


@dataclass
class SessionPlan:
    """Everything the replay sends for one session."""

    source: str
    """The data set and record of the naive prompt, e.g. ``"gier:2l7rum.jpg"``."""
    image_path: str
    naive_prompt: str
    prompts: list[PromptPlan]
    entities: list[Entity]
    target_entities: list[str]
    edit_type: str
    intent_confidence: float
    alignment_score: float
    unintended_count: int
    feedback_type: FeedbackType
    rating: int
    comments: str
    spatial_layout: str


def load_instructpix2pix(path: pathlib.Path) -> list[dict[str, Any]]:
    """Read the InstructPix2Pix JSON lines file."""
    records = []
    with path.open(encoding="utf-8") as file:
        for line in file:
            if line.strip():
                records.append(json.loads(line))
    return records


def load_gier(path: pathlib.Path) -> list[dict[str, Any]]:
    """Read the GIER requests, whose bare ``NaN`` tokens become ``None``."""
    records = json.loads(path.read_text(encoding="utf-8"))
    for record in records:
        detailed = record.get("detailed_request")
        if not isinstance(detailed, str) or not detailed.strip():
            record["detailed_request"] = None
    return list(records)


def load_coco(folder: pathlib.Path) -> CocoPhoto:
    """Read ``annotations.json`` of a COCO photo folder.

    Each annotation becomes an entity named after its category and its rank
    among objects of that category (``cat_0``, ``cat_1``), with the box as
    ``[x, y, width, height]``, confidence 1.0 (people drew these boxes) and
    ``area_percent`` = area / (width * height) * 100.
    """
    annotations = json.loads((folder / "annotations.json").read_text("utf-8"))
    image = annotations["image"]
    width, height = int(image["width"]), int(image["height"])
    names = {category["id"]: category["name"] for category in annotations["categories"]}
    counts: dict[str, int] = {}
    entities = []
    for annotation in annotations["annotations"]:
        label = names[annotation["category_id"]]
        rank = counts.get(label, 0)
        counts[label] = rank + 1
        entities.append(
            Entity(
                entity_id=f"{label}_{rank}",
                label=label,
                confidence=1.0,
                bbox=BoundingBox.from_xywh(annotation["bbox"]),
                area_percent=annotation["area"] / (width * height) * 100,
            )
        )
    return CocoPhoto(
        image_path=str((folder / image["file_name"]).resolve()),
        width=width,
        height=height,
        entities=entities,
    )


def _fraction(text: str, salt: str) -> float:
    """Return a number in [0, 1) fixed by ``text``: the replay's stand-in score."""
    digest = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _intent(naive_prompt: str, entities: list[Entity]) -> tuple[list[str], str, float]:
    words = {word.strip(".,!?'\"").lower() for word in naive_prompt.split()}
    singular = {word[:-1] for word in words if word.endswith("s")}
    targets = [
        entity.entity_id
        for entity in entities
        if entity.label and entity.label.lower() in words | singular
    ]
    if words & STYLE_WORDS:
        edit_type = "style"
    elif targets:
        edit_type = "object"
    else:
        edit_type = "global"
    confidence = round(0.5 + 0.5 * _fraction(naive_prompt, "intent"), 3)
    return targets, edit_type, confidence


def _plan(
    source: str,
    naive_prompt: str,
    refinements: list[str],
    comments: str,
    photo: CocoPhoto | None,
    fallback_image: str,
) -> SessionPlan:
    entities = list(photo.entities) if photo is not None else []
    texts = [naive_prompt, *refinements][:MAX_ITERATIONS]
    prompts = [
        PromptPlan(
            iteration=iteration,
            positive_prompt=text,
            negative_prompt="" if iteration == 0 else "blurry, distorted, artifacts",
            quality_score=round(0.4 + 0.6 * (iteration + 1) / len(texts), 3),
        )
        for iteration, text in enumerate(texts)
    ]
    targets, edit_type, confidence = _intent(naive_prompt, entities)
    score = round(0.3 + 0.7 * _fraction(naive_prompt, "alignment"), 3)
    if score >= 0.8:
        feedback = FeedbackType.ACCEPT
    elif score >= 0.55:
        feedback = FeedbackType.PARTIAL
    else:
        feedback = FeedbackType.REJECT
    layout = ", ".join(
        f"{entity.entity_id} covers {entity.area_percent:.1f}%"
        for entity in entities
        if entity.area_percent is not None
    )
    return SessionPlan(
        source=source,
        image_path=photo.image_path if photo is not None else fallback_image,
        naive_prompt=naive_prompt,
        prompts=prompts,
        entities=entities,
        target_entities=targets,
        edit_type=edit_type,
        intent_confidence=confidence,
        alignment_score=score,
        unintended_count=1 if _fraction(naive_prompt, "unintended") < 0.2 else 0,
        feedback_type=feedback,
        rating=1 + min(4, int(score * 5)),
        comments=comments,
        spatial_layout=layout or "unknown",
    )


def plan_sessions(
    instructpix2pix: list[dict[str, Any]],
    gier: list[dict[str, Any]],
    photo: CocoPhoto | None,
    limit: int | None,
) -> list[SessionPlan]:
    """Interleave the two request sets into at most ``limit`` sessions."""
    from_ip2p = [
        _plan(
            source=f"instructpix2pix:{index}",
            naive_prompt=record["edit"],
            refinements=[record["output"]],
            comments=f"wanted: {record['output']}",
            photo=photo,
            fallback_image=f"instructpix2pix/{index}.jpg",
        )
        for index, record in enumerate(instructpix2pix)
        if isinstance(record.get("edit"), str) and record["edit"].strip()
    ]
    from_gier = []
    for record in gier:
        request = record.get("request")
        if not isinstance(request, str) or not request.strip():
            continue
        refinements = [record["detailed_request"]] if record["detailed_request"] else []
        refinements += [text for text in record.get("expert_summary") or [] if text]
        amateur = [text for text in record.get("amateur_summary") or [] if text]
        refinements += amateur
        from_gier.append(
            _plan(
                source=f"gier:{record.get('input', '')}",
                naive_prompt=request,
                refinements=refinements,
                comments=amateur[0] if amateur else "",
                photo=photo,
                fallback_image=f"gier/{record.get('input', 'unknown.jpg')}",
            )
        )
    plans: list[SessionPlan] = []
    for index in range(max(len(from_ip2p), len(from_gier))):
        for source in (from_ip2p, from_gier):
            if index < len(source):
                plans.append(source[index])
    if limit is not None:
        plans = plans[:limit]
    return plans
