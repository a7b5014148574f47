"""One client process of the fleet test: posts builds for hosts, follows them to the end.

    python -m tests.integration.fleet_client --url URL --hosts h1,h2 --builds 100 \
        --index 0 --image IMG --out RESULT.json

Build ``i`` of this client (one new instance each) is placed on host
``hosts[(index + i) % len(hosts)]``. All are posted first (``Client.start_build``),
then followed (``Client.wait``). A build that ends ROLLED_BACK (its agent was
killed under it and recovery rolled it back) is posted again for the same
instance and host, as a caller of a fleet would: a new build. The database
may be restarted meanwhile: every call is retried until it answers (bounded).
What happened is written to ``RESULT.json``: per instance its host, every
build posted for it in order, and the last build's state.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from spawnflow.client import Client
from spawnflow.engine.log_retry import unavailable
from spawnflow.persistence import lifecycle

T = TypeVar("T")
# Seconds a call is retried while the database does not answer (a restart).
UNAVAILABLE_FOR = 120.0
# Posts of one instance at most (the first and its re-posts).
MAX_POSTS = 4


def retried(call: Callable[[], T]) -> T:
    deadline = time.monotonic() + UNAVAILABLE_FOR
    while True:
        try:
            return call()
        except Exception as exc:
            # The log's own test of "unavailable now": SQLAlchemy's errors and the
            # driver's (the backend's raw write path raises psycopg's) alike.
            if not unavailable(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def spec(image: str, n: int) -> dict[str, Any]:
    return {
        "instance": {"uuid": str(uuid.uuid4()), "name": f"fleet-{n}"},
        "flavor": {"vcpus": 1, "memory_mb": 64, "root_gb": 0},
        "image": {"source": image, "disk_format": "qcow2"},
    }


def follow(client: Client, build_id: str, timeout: float) -> str:
    """The build's final state (or its state when ``timeout`` s passed)."""
    deadline = time.monotonic() + timeout
    while True:
        state = retried(lambda: client.state(build_id))
        if lifecycle.is_final(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    hosts = args.hosts.split(",")
    deadline = time.monotonic() + args.timeout
    with Client(args.url) as client:
        posted = []
        for i in range(args.builds):
            one = spec(args.image, args.index * args.builds + i)
            host = hosts[(args.index + i) % len(hosts)]
            build_id = retried(lambda s=one, h=host: client.start_build(s, host=h))
            posted.append(
                {
                    "instance": one["instance"]["uuid"],
                    "host": host,
                    "spec": one,
                    "builds": [build_id],
                }
            )
        for entry in posted:
            while True:
                left = max(1.0, deadline - time.monotonic())
                state = follow(client, entry["builds"][-1], left)
                if state != lifecycle.ROLLED_BACK or len(entry["builds"]) >= MAX_POSTS:
                    break
                again = retried(lambda e=entry: client.start_build(e["spec"], host=e["host"]))
                entry["builds"].append(again)
            entry["state"] = state
            del entry["spec"]
    return posted


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--hosts", required=True)
    parser.add_argument("--builds", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parsed = parser.parse_args()
    started = time.monotonic()
    result = run(parsed)
    with open(parsed.out, "w") as out:
        json.dump({"seconds": time.monotonic() - started, "instances": result}, out)
