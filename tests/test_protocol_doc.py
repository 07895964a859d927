"""docs/protocol.md stays true: its example session is replayed against a real server.

The frames after ``→`` are sent as written; those after ``←`` must come back, in any
order up to the next ``→`` (the doc says an ack and the next batch may cross). Lease ids
are random, so each lease of the doc is mapped to the one the server chose; the rate
and the ETA depend on the clock and are not compared.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from planchet.server import PlanchetServer
from tests.support import REPO

DOC = REPO / "docs" / "protocol.md"
WAIT = 20.0
CLOCK = {"rate", "eta_seconds"}


def example_session() -> list[tuple[str, dict[str, Any]]]:
    """The (direction, frame) pairs of the doc's "A complete worker session" block."""
    text = DOC.read_text()
    section = text[text.index("## A complete worker session"):]
    block = section.split("```")[1]
    steps = []
    for line in block.strip().splitlines():
        arrow, _, frame = line.partition(" ")
        steps.append((arrow, json.loads(frame)))
    return steps


def exchanges(steps: list[tuple[str, dict[str, Any]]]) -> list[tuple[dict, list[dict]]]:
    """Each sent frame with the frames the doc shows coming back before the next one."""
    grouped: list[tuple[dict, list[dict]]] = []
    for arrow, frame in steps:
        if arrow == "→":
            grouped.append((frame, []))
        else:
            grouped[-1][1].append(frame)
    return grouped


def normalise(frame: dict[str, Any], leases: dict[str, str]) -> str:
    """The frame with the server's lease ids renamed to the doc's and clock fields gone."""
    frame = dict(frame)
    if "lease" in frame:
        frame["lease"] = leases.get(frame["lease"], frame["lease"])
    if isinstance(frame.get("data"), dict):
        frame["data"] = {k: v for k, v in frame["data"].items() if k not in CLOCK}
    return json.dumps(frame, sort_keys=True)


async def test_the_example_session_replays_exactly(server: PlanchetServer, data_dir: Path) -> None:
    """Every frame the protocol doc shows the server sending comes back as shown, and the
    output file is the one the doc prints."""
    (data_dir / "tiny.jsonl").write_text('{"text":"hello"}\n{"text":"world"}\n{"text":"bye"}\n')
    leases: dict[str, str] = {}  # the server's lease id -> the doc's
    async with connect(f"ws://127.0.0.1:{server.port}") as ws:
        for sent, expected in exchanges(example_session()):
            doc_to_real = {doc: real for real, doc in leases.items()}
            if "lease" in sent:
                sent = {**sent, "lease": doc_to_real[sent["lease"]]}
            await ws.send(json.dumps(sent))
            got = [json.loads(await asyncio.wait_for(ws.recv(), WAIT)) for _ in expected]
            doc_batches = iter(f["lease"] for f in expected if f["type"] == "batch")
            for frame in got:
                if frame["type"] == "batch":
                    leases[frame["lease"]] = next(doc_batches)
            assert sorted(normalise(f, leases) for f in got) == sorted(
                normalise(f, {}) for f in expected)
    text = DOC.read_text()
    printed = text[text.index("Resulting `demo.out.jsonl`"):].split("```")[1].strip()
    assert (data_dir / "demo.out.jsonl").read_text().strip() == printed
