"""A project set up the Supabase way (tests/clients/supabase_project.sql): a private channel
authorized by realtime.messages policies and a database broadcast, through the Python
client's strict models (the autouse `rejected_frames` fixture fails on any dropped frame).
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from realtime import RealtimeSubscribeStates

from conftest import Inbox, mint_token, unique_topic
from test_realtime_client import subscribe

DATABASE_URL = os.environ.get("SWITCHBOARD_DATABASE_URL")
if not DATABASE_URL:
    raise RuntimeError("environment variable SWITCHBOARD_DATABASE_URL must be set")


@pytest.fixture
async def db():
    async with await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True) as conn:
        yield conn


def private(broadcast: dict | None = None) -> dict:
    return {
        "config": {
            "broadcast": broadcast or {"ack": False, "self": False},
            "presence": {"key": "", "enabled": False},
            "private": True,
        }
    }


async def test_a_member_joins_a_private_room_and_receives_a_database_broadcast(connect, db):
    member = str(uuid.uuid4())
    room = unique_topic("py-room")
    await db.execute(
        "insert into public.room_members (room, user_id) values (%s, %s)", (room, member)
    )
    client = await connect(mint_token(sub=member))
    channel = client.channel(room, private())
    notes = Inbox("broadcasts")
    channel.on_broadcast("note", notes.push)
    await subscribe(channel)

    await db.execute("select realtime.send('{\"n\": 1}'::jsonb, 'note', %s)", (room,))
    message = await notes.next(what="the database broadcast")
    assert message["payload"]["n"] == 1
    assert message["meta"]["id"] == message["payload"]["id"]


async def test_a_stranger_is_refused_with_supabases_reason(connect):
    room = unique_topic("py-room")
    client = await connect(mint_token(sub=str(uuid.uuid4())))
    channel = client.channel(room, private())
    statuses = Inbox("statuses")
    await channel.subscribe(lambda status, err: statuses.push((status, str(err) if err else None)))
    status, err = await statuses.next(what="the join outcome", timeout=12)
    assert status == RealtimeSubscribeStates.CHANNEL_ERROR, (status, err)
    assert f"You do not have permissions to read from this Channel topic: {room}" in (err or "")


async def test_replayed_messages_pass_the_clients_models(connect, db):
    member = str(uuid.uuid4())
    room = unique_topic("py-replay")
    await db.execute(
        "insert into public.room_members (room, user_id) values (%s, %s)", (room, member)
    )
    for n in (1, 2):
        await db.execute(
            "select realtime.send(jsonb_build_object('n', %s::int), 'note', %s)", (n, room)
        )
    client = await connect(mint_token(sub=member))
    channel = client.channel(room, private({"ack": False, "self": False, "replay": {"since": 0}}))
    notes = Inbox("broadcasts")
    channel.on_broadcast("note", notes.push)
    await subscribe(channel)
    for n in (1, 2):
        message = await notes.next(what=f"replayed note {n}")
        assert message["payload"]["n"] == n
        assert message["meta"] == {"id": message["payload"]["id"], "replayed": True}
