"""The state document and the updates every benchmark writes.

All benchmarks write the same document, so that the echo server, the daemon,
``SqliteSaver`` and raw ``sqlite3`` move messages and rows of the same size.
The document follows the state file of an image-editing session: scene
analysis with six entities, the intent, three prompt iterations and a
validation, about 2 KB as compact JSON.
"""

from __future__ import annotations

import json
import time
from typing import Any

ENTITY_LABELS = ("cat", "cat", "remote", "remote", "couch", "bed")


def base_document(session_id: str) -> dict[str, Any]:
    """Return the state document a benchmark session starts from."""
    entities = [
        {
            "entity_id": f"{label}_{index}",
            "label": label,
            "confidence": 0.9 - index * 0.05,
            "bbox": [12.5 + 40 * index, 30.0 + 10 * index, 120.0, 96.5],
            "color_hex": "#7f6a55",
            "area_percent": 4.5 + index,
        }
        for index, label in enumerate(ENTITY_LABELS)
    ]
    prompts = {
        f"iteration_{index}": {
            "positive": "two cats asleep on a couch under warm evening light, "
            f"detailed fur, soft shadows, refinement {index}",
            "negative": "blurry, extra limbs, distorted remotes, oversaturated",
            "quality_score": 0.6 + index * 0.1,
        }
        for index in range(3)
    }
    return {
        "session_id": session_id,
        "current_stage": "refinement",
        "image_path": "/data/photos/000000039769.png",
        "naive_prompt": "make the light warmer and the cats sharper",
        "scene_analysis": {
            "entities": entities,
            "spatial_layout": "two cats lying side by side on a pink couch, "
            "two remotes beside them",
        },
        "intent": {
            "target_entities": ["cat_0", "cat_1"],
            "edit_type": "style",
            "confidence": 0.85,
        },
        "prompts": prompts,
        "edited_image_path": "/data/edits/000000039769-2.png",
        "validation": {"score": 0.87, "delta": {"preserved": 4, "modified": 2}},
    }


def base_document_json(session_id: str) -> str:
    """Return base_document() as compact JSON text."""
    return json.dumps(base_document(session_id), separators=(",", ":"))


def patch_json(step: int) -> str:
    """Return a small merge patch that moves the progress counter to step."""
    return f'{{"current_stage":"refinement","progress":{{"step":{step}}}}}'


def timed_patch_json(step: int) -> str:
    """Return a merge patch that carries its send time on the monotonic clock.

    ``time.monotonic_ns()`` reads CLOCK_MONOTONIC, which every process on one
    Linux machine shares, so a watcher in another process subtracts it from
    its own reading to get the delivery latency.
    """
    return f'{{"progress":{{"step":{step},"sent_ns":{time.monotonic_ns()}}}}}'
