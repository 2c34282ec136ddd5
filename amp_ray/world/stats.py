"""What a generated world holds, measured from its items: the table the data stage prints."""

from __future__ import annotations

import json
from collections import defaultdict

import pyarrow as pa

from amp_ray.world.generate import SPLIT_MODES


def world_table(items: pa.Table) -> list[str]:
    """Per split: images, items, share of images with the trigger, and P(partner | trigger)."""
    seen: set[str] = set()
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # images, items, trigger, both
    trigger = partner = ""
    for item_id, split, facts_json in zip(
        items.column("item_id").to_pylist(),
        items.column("split").to_pylist(),
        items.column("annotations").to_pylist(),
        strict=True,
    ):
        row = stats[split]
        row[1] += 1
        image = item_id.rsplit("/", 1)[0]
        if image in seen:
            continue
        seen.add(image)
        facts = json.loads(facts_json)
        trigger, partner = facts["bias"]["trigger"], facts["bias"]["partner"]
        kinds = {obj["kind"] for obj in facts["objects"]}
        row[0] += 1
        row[2] += trigger in kinds
        row[3] += trigger in kinds and partner in kinds
    conditional_name = f"P({partner}|{trigger})"
    lines = [
        f"{'split':<16} {'images':>7} {'items':>7} {'with ' + trigger:>12} {conditional_name:>18}"
    ]
    order = {name: i for i, name in enumerate(SPLIT_MODES)}
    for split in sorted(stats, key=lambda name: order.get(name, len(order))):
        images, count, with_trigger, both = stats[split]
        share = with_trigger / images if images else 0.0
        conditional = f"{both / with_trigger:.2f}" if with_trigger else "-"
        lines.append(f"{split:<16} {images:>7} {count:>7} {share:>12.2f} {conditional:>18}")
    return lines
