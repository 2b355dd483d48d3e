"""The Python `realtime` client (vsn 1.0.0, JSON objects) against the hub."""

from __future__ import annotations

import logging

import pytest
from realtime import RealtimeSubscribeStates
from realtime.types import RealtimeAcknowledgementStatus

from conftest import Inbox, mint_token, unique_topic


async def subscribe(channel) -> Inbox:
    """Joins and returns the status inbox; fails unless the first status is SUBSCRIBED."""
    statuses = Inbox(f"{channel.topic} statuses")
    await channel.subscribe(lambda status, err: statuses.push((status, str(err) if err else None)))
    status, err = await statuses.next(what="the join outcome", timeout=12)
    assert status == RealtimeSubscribeStates.SUBSCRIBED, f"join of {channel.topic}: {status} ({err})"
    return statuses


async def reply_of(push) -> tuple[str, object]:
    """Waits for the server's reply to a push: ('ok'|'error'|'timeout', response)."""
    replies = Inbox(f"reply to {push.event}")
    push.receive(RealtimeAcknowledgementStatus.Ok, lambda r: replies.push(("ok", r)))
    push.receive(RealtimeAcknowledgementStatus.Error, lambda r: replies.push(("error", r)))
    push.receive(RealtimeAcknowledgementStatus.Timeout, lambda: replies.push(("timeout", None)))
    return await replies.next(what=f"reply to {push.event}", timeout=12)


def broadcast_channel(client, topic, *, self_=False, ack=False, key=""):
    return client.channel(
        topic,
        {
            "config": {
                "broadcast": {"self": self_, "ack": ack},
                "presence": {"key": key, "enabled": False},
                "private": False,
            }
        },
    )


class _FrameWatch(logging.Handler):
    """Feeds the client's DEBUG 'receive:' lines (raw frames) into an inbox."""

    def __init__(self, inbox: Inbox) -> None:
        super().__init__(level=logging.DEBUG)
        self.inbox = inbox

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("receive: "):
            self.inbox.push(message)


async def test_client_joins_a_channel_and_reports_subscribed(connect):
    client = await connect()
    assert "vsn=1.0.0" in client.endpoint_url()
    channel = client.channel(unique_topic("py-join"))
    await subscribe(channel)
    assert channel.is_joined


async def test_heartbeat_with_null_ref_gets_a_reply_the_client_accepts(connect):
    frames = Inbox("raw frames")
    handler = _FrameWatch(frames)
    logger = logging.getLogger("realtime")
    logger.addHandler(handler)
    try:
        # The client sends `{"topic":"phoenix","event":"heartbeat","ref":null}` right after
        # connecting; the reply must come back on topic phoenix with ref null.
        await connect()
        reply = await frames.next(lambda m: '"phoenix"' in m and "phx_reply" in m, "heartbeat reply")
        assert '"status":"ok"' in reply.replace(" ", "")
    finally:
        logger.removeHandler(handler)


async def test_broadcast_reaches_the_other_client_and_self_when_asked(connect):
    topic = unique_topic("py-broadcast")
    alice = broadcast_channel(await connect(), topic, self_=True)
    bob = broadcast_channel(await connect(), topic)
    at_alice, at_bob = Inbox("alice broadcasts"), Inbox("bob broadcasts")
    alice.on_broadcast("*", at_alice.push)
    bob.on_broadcast("greeting", at_bob.push)
    await subscribe(alice)
    await subscribe(bob)

    await alice.send_broadcast("greeting", {"text": "hello", "n": 1})
    got = await at_bob.next(what="alice's greeting at bob")
    assert got["event"] == "greeting"
    assert got["payload"] == {"text": "hello", "n": 1}
    own = await at_alice.next(what="alice's own greeting (self: true)")
    assert own["payload"] == {"text": "hello", "n": 1}

    await bob.send_broadcast("reply", {"text": "hi"})
    back = await at_alice.next(lambda m: m["event"] == "reply", "bob's reply at alice")
    assert back["payload"] == {"text": "hi"}


async def test_broadcast_with_ack_gets_an_ok_reply(connect):
    channel = broadcast_channel(await connect(), unique_topic("py-ack"), ack=True)
    await subscribe(channel)
    push = await channel.push(
        "broadcast", {"type": "broadcast", "event": "ping", "payload": {"n": 1}}
    )
    status, _ = await reply_of(push)
    assert status == "ok"


async def test_presence_track_is_seen_by_another_client(connect):
    topic = unique_topic("py-presence")
    alice = broadcast_channel(await connect(), topic, key="alice")
    bob = broadcast_channel(await connect(), topic, key="bob")
    joins, leaves, syncs = Inbox("joins at bob"), Inbox("leaves at bob"), Inbox("syncs at bob")
    bob.on_presence_join(lambda key, current, new: joins.push((key, new)))
    bob.on_presence_leave(lambda key, current, left: leaves.push((key, left)))
    bob.on_presence_sync(lambda: syncs.push(dict(bob.presence_state())))
    alice.on_presence_sync(lambda: None)
    await subscribe(alice)
    await subscribe(bob)
    await syncs.next(what="first sync from presence_state after the join")

    push = await alice.push("presence", {"event": "track", "payload": {"name": "Alice"}})
    status, _ = await reply_of(push)
    assert status == "ok"
    key, new = await joins.next(lambda j: j[0] == "alice", "alice's join at bob")
    assert new[0]["name"] == "Alice"
    state = await syncs.next(lambda st: "alice" in st, "sync with alice in it")
    assert state["alice"][0]["name"] == "Alice"

    await alice.untrack()
    key, left = await leaves.next(lambda lv: lv[0] == "alice", "alice's leave at bob")
    assert left[0]["name"] == "Alice"


async def test_late_joiner_gets_existing_presence_in_presence_state(connect):
    topic = unique_topic("py-late")
    alice = broadcast_channel(await connect(), topic, key="alice")
    alice.on_presence_sync(lambda: None)
    await subscribe(alice)
    status, _ = await reply_of(await alice.push("presence", {"event": "track", "payload": {"n": 1}}))
    assert status == "ok"

    carol = broadcast_channel(await connect(), topic, key="carol")
    syncs = Inbox("syncs at carol")
    carol.on_presence_sync(lambda: syncs.push(dict(carol.presence_state())))
    await subscribe(carol)
    state = await syncs.next(lambda st: "alice" in st, "presence_state with alice")
    assert state["alice"][0]["n"] == 1


async def test_leave_gets_ok_and_closes_the_channel(connect):
    client = await connect()
    channel = client.channel(unique_topic("py-leave"))
    statuses = await subscribe(channel)
    await channel.unsubscribe()
    status, _ = await statuses.next(lambda s: s[0] == RealtimeSubscribeStates.CLOSED, "CLOSED")
    assert channel.is_closed


async def test_join_with_postgres_changes_binds_ids(connect):
    client = await connect()
    channel = client.channel(unique_topic("py-pg"))
    channel.on_postgres_changes("INSERT", lambda p: None, table="todos", schema="public")
    channel.on_postgres_changes("*", lambda p: None, table="todos", filter="id=eq.1")
    await subscribe(channel)
    ids = [cb.id for cb in channel.postgres_changes_callbacks]
    assert all(isinstance(i, int) for i in ids), ids


async def test_expired_token_on_join_is_refused(connect):
    client = await connect(token=mint_token(expires_in=3600))
    await client.set_auth(mint_token(expires_in=-60))
    channel = client.channel(unique_topic("py-expired"))
    statuses = Inbox("statuses")
    await channel.subscribe(lambda status, err: statuses.push((status, str(err) if err else None)))
    status, err = await statuses.next(what="join outcome")
    assert status == RealtimeSubscribeStates.CHANNEL_ERROR, (status, err)
    assert "expired" in (err or "").lower(), err


@pytest.mark.parametrize("event", ["typing", "TYPING"])
async def test_event_names_match_case_insensitively(connect, event):
    topic = unique_topic("py-case")
    alice = broadcast_channel(await connect(), topic)
    bob = broadcast_channel(await connect(), topic)
    got = Inbox("typing at bob")
    bob.on_broadcast("typing", got.push)
    await subscribe(alice)
    await subscribe(bob)
    await alice.send_broadcast(event, {"on": True})
    assert (await got.next(what="typing broadcast"))["event"] == event
