// Presence between real realtime-js clients: track, untrack, disconnect, late joiners.

import assert from 'node:assert/strict'
import { scenario, subscribe, collect, uniqueTopic } from '../lib/harness.mjs'

/** A channel with presence listeners registered before the join (so presence is enabled). */
function presenceChannel(client, topic, key) {
  const channel = client.channel(topic, { config: { presence: { key } } })
  const joins = collect(channel, 'presence', { event: 'join' })
  const leaves = collect(channel, 'presence', { event: 'leave' })
  const syncs = collect(channel, 'presence', { event: 'sync' })
  return { channel, joins, leaves, syncs }
}

/** Waits until `channel.presenceState()` satisfies `pred` (checked after each sync). */
async function stateWhere(p, pred, what) {
  while (!pred(p.channel.presenceState())) {
    await p.syncs.next(() => true, `sync until ${what}; state now ${JSON.stringify(p.channel.presenceState())}`)
  }
  return p.channel.presenceState()
}

scenario('track is seen by the other client as a join and in its synced state', async (s) => {
  const topic = uniqueTopic('presence')
  const alice = presenceChannel(s.client('A'), topic, 'alice')
  const bob = presenceChannel(s.client('B'), topic, 'bob')
  await Promise.all([subscribe(alice.channel), subscribe(bob.channel)])
  // presence_state after the join produces a first sync on both sides.
  await bob.syncs.next(() => true, 'initial sync (presence_state after join)')

  assert.equal(await alice.channel.track({ name: 'Alice', online_at: '2026-01-01' }), 'ok')
  const join = await bob.joins.next((j) => j.key === 'alice', 'join of alice at bob')
  assert.equal(join.newPresences.length, 1)
  assert.equal(join.newPresences[0].name, 'Alice')
  assert.equal(typeof join.newPresences[0].presence_ref, 'string')
  const state = await stateWhere(bob, (st) => st.alice?.length === 1, 'alice present')
  assert.equal(state.alice[0].online_at, '2026-01-01')
  // The tracker sees itself too.
  await alice.joins.next((j) => j.key === 'alice', 'own join at alice')
})

scenario('untrack is seen by the other client as a leave', async (s) => {
  const topic = uniqueTopic('untrack')
  const alice = presenceChannel(s.client('A'), topic, 'alice')
  const bob = presenceChannel(s.client('B'), topic, 'bob')
  await Promise.all([subscribe(alice.channel), subscribe(bob.channel)])
  await alice.channel.track({ name: 'Alice' })
  await bob.joins.next((j) => j.key === 'alice', 'join of alice')
  assert.equal(await alice.channel.untrack(), 'ok')
  const leave = await bob.leaves.next((l) => l.key === 'alice', 'leave of alice after untrack')
  assert.equal(leave.leftPresences[0].name, 'Alice')
  await stateWhere(bob, (st) => !st.alice, 'alice gone')
})

scenario('a tracked client that disconnects is seen as a leave', async (s) => {
  const topic = uniqueTopic('disconnect')
  const aliceClient = s.client('A')
  const alice = presenceChannel(aliceClient, topic, 'alice')
  const bob = presenceChannel(s.client('B'), topic, 'bob')
  await Promise.all([subscribe(alice.channel), subscribe(bob.channel)])
  await alice.channel.track({ name: 'Alice' })
  await bob.joins.next((j) => j.key === 'alice', 'join of alice')
  await aliceClient.disconnect()
  await bob.leaves.next((l) => l.key === 'alice', 'leave of alice after her socket closed')
  await stateWhere(bob, (st) => !st.alice, 'alice gone')
})

scenario('a tracked client that leaves the channel is seen as a leave', async (s) => {
  const topic = uniqueTopic('leave')
  const alice = presenceChannel(s.client('A'), topic, 'alice')
  const bob = presenceChannel(s.client('B'), topic, 'bob')
  await Promise.all([subscribe(alice.channel), subscribe(bob.channel)])
  await alice.channel.track({ name: 'Alice' })
  await bob.joins.next((j) => j.key === 'alice', 'join of alice')
  assert.equal(await alice.channel.unsubscribe(), 'ok')
  await bob.leaves.next((l) => l.key === 'alice', 'leave of alice after phx_leave')
})

scenario('a late joiner receives existing presences in its first sync', async (s) => {
  const topic = uniqueTopic('late')
  const alice = presenceChannel(s.client('A'), topic, 'alice')
  await subscribe(alice.channel)
  assert.equal(await alice.channel.track({ name: 'Alice' }), 'ok')
  await alice.joins.next((j) => j.key === 'alice', 'own join')
  const carol = presenceChannel(s.client('C', { vsn: '1.0.0' }), topic, 'carol')
  await subscribe(carol.channel)
  const state = await stateWhere(carol, (st) => st.alice?.length === 1, 'alice in snapshot')
  assert.equal(state.alice[0].name, 'Alice')
})

scenario('tracking again with a new payload updates the presence in place', async (s) => {
  const topic = uniqueTopic('update')
  const alice = presenceChannel(s.client('A'), topic, 'alice')
  const bob = presenceChannel(s.client('B'), topic, 'bob')
  await Promise.all([subscribe(alice.channel), subscribe(bob.channel)])
  await alice.channel.track({ status: 'idle' })
  await stateWhere(bob, (st) => st.alice?.[0]?.status === 'idle', 'alice idle')
  await alice.channel.track({ status: 'typing' })
  const state = await stateWhere(bob, (st) => st.alice?.[0]?.status === 'typing', 'alice typing')
  assert.equal(state.alice.length, 1, `one meta for alice, got ${JSON.stringify(state.alice)}`)
})
