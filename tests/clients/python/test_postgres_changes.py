"""Row changes from Postgres reaching the Python client's postgres_changes callbacks.

Needs SWITCHBOARD_DATABASE_URL (tests/clients/fixture.sql applied), as
tests/real_clients.rs prepares it. Every frame must pass the client's pydantic models
(the autouse `rejected_frames` fixture).
"""

from __future__ import annotations

import os
import random
import re

import psycopg
import pytest

from conftest import Inbox, unique_topic
from test_realtime_client import subscribe

DATABASE_URL = os.environ.get("SWITCHBOARD_DATABASE_URL")
if not DATABASE_URL:
    raise RuntimeError("environment variable SWITCHBOARD_DATABASE_URL must be set")

COMMIT_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
async def db():
    async with await psycopg.AsyncConnection.connect(DATABASE_URL, autocommit=True) as conn:
        yield conn


def new_id() -> int:
    return random.randrange(10**12, 10**13)


async def live_channel(client, **listener):
    channel = client.channel(unique_topic("py-rows"))
    changes, system = Inbox("postgres_changes"), Inbox("system")
    channel.on_postgres_changes(callback=changes.push, **listener)
    channel.on_system(system.push)
    await subscribe(channel)
    note = await system.next(lambda p: p.extension == "postgres_changes", "Subscribed to PostgreSQL")
    assert note.status == "ok", note
    return channel, changes


async def test_insert_update_delete_reach_the_python_client(connect, db):
    channel, changes = await live_channel(await connect(), event="*", table="notes", schema="public")
    bound = channel.postgres_changes_callbacks[0].id
    row = new_id()
    await db.execute("insert into public.notes (id, body) values (%s, 'py')", (row,))
    await db.execute("update public.notes set body = 'py2' where id = %s", (row,))
    await db.execute("delete from public.notes where id = %s", (row,))

    ins = await changes.next(lambda c: c["data"]["type"] == "INSERT", "INSERT")
    assert ins["ids"] == [bound]
    data = ins["data"]
    assert (data["schema"], data["table"]) == ("public", "notes")
    assert COMMIT_TS.match(data["commit_timestamp"]), data["commit_timestamp"]
    assert data["record"]["id"] == row and data["record"]["body"] == "py"
    assert {c["name"] for c in data["columns"]} >= {"id", "body"}
    assert data["errors"] is None

    upd = await changes.next(lambda c: c["data"]["type"] == "UPDATE", "UPDATE")
    assert upd["data"]["record"]["body"] == "py2"
    assert upd["data"]["old_record"]["id"] == row
    dele = await changes.next(lambda c: c["data"]["type"] == "DELETE", "DELETE")
    assert dele["data"]["old_record"]["id"] == row


async def test_a_change_on_a_table_without_a_primary_key_brings_its_error_to_python(connect, db):
    # Supabase sends this frame with `commit_timestamp: null`, which the client's model
    # refuses: the frame is dropped and the app never learns why nothing arrives.
    await db.execute(
        "create table if not exists public.py_no_pk (msg text);"
        " grant select on public.py_no_pk to anon, authenticated, service_role;"
        " select realtime.enable('public.py_no_pk')"
    )
    channel, changes = await live_channel(await connect(), event="INSERT", table="py_no_pk", schema="public")
    await db.execute("insert into public.py_no_pk (msg) values ('no key')")
    got = await changes.next(lambda c: c["data"]["table"] == "py_no_pk", "the Error 400 frame")
    data = got["data"]
    assert data["errors"] == ["Error 400: Bad Request, no primary key"]
    assert COMMIT_TS.match(data["commit_timestamp"]), data["commit_timestamp"]
    assert data["record"] == {} and data["columns"] == []
