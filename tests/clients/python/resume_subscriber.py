"""Used by tests/resume_clients.rs: a Python realtime client that opts in to resume with
params={"resume": ...}, subscribes to INSERTs of public.items as one user, and prints
every change, system message and status as one JSON line. It runs until stdin closes.
Env: SB_URL (http://host:port/realtime/v1), SB_TOKEN, SB_RESUME.
"""

import asyncio
import json
import os
import sys

from realtime import AsyncRealtimeClient


def out(obj) -> None:
    print(json.dumps(obj), flush=True)


async def main() -> None:
    client = AsyncRealtimeClient(
        os.environ["SB_URL"], os.environ["SB_TOKEN"], params={"resume": os.environ["SB_RESUME"]}
    )
    await client.connect()
    channel = client.channel("resume-test")
    channel.on_postgres_changes(
        event="INSERT",
        schema="public",
        table="items",
        callback=lambda p: out({"ev": "change", "id": p["data"]["record"]["id"]}),
    )
    channel.on_system(
        lambda p: out({"ev": "system", "payload": {"message": p.message, "status": p.status}})
    )
    await channel.subscribe(
        lambda status, err: out({"ev": "status", "status": str(status), "error": str(err) if err else None})
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
