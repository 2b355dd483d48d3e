// Real realtime-js clients connected to different hub nodes of one cluster (Redis):
// broadcasts with acks, `self`, REST broadcasts, binary payloads and presence joins,
// updates and leaves cross nodes, each arriving exactly once.
//
// Needs SWITCHBOARD_NODE_URLS: three `http://host:port/realtime/v1` URLs, comma-separated
// (tests/cluster.rs starts the nodes). "Exactly once" is checked with a marker sent after
// the message by the same client: Redis delivers one publisher's messages in order, so a
// duplicate would arrive before the marker.

import assert from 'node:assert/strict'
import { scenario, subscribe, collect, uniqueTopic, ANON_KEY, mintToken } from '../lib/harness.mjs'

const NODES = (process.env.SWITCHBOARD_NODE_URLS ?? '')
  .split(',')
  .filter(Boolean)
  .map((u) => u.replace(/\/+$/, ''))
if (NODES.length < 3) throw new Error('SWITCHBOARD_NODE_URLS must list three node URLs')

/** realtime-js options for a client on node `i`. */
const on = (i, more = {}) => ({ endpoint: NODES[i].replace(/^http/i, 'ws'), ...more })

/** A presence channel with its join/leave/sync inboxes (listeners before the join). */
function presenceChannel(client, topic, key) {
  const channel = client.channel(topic, { config: { presence: { key } } })
  const joins = collect(channel, 'presence', { event: 'join' })
  const leaves = collect(channel, 'presence', { event: 'leave' })
  const syncs = collect(channel, 'presence', { event: 'sync' })
  return { channel, joins, leaves, syncs }
}

/** Waits until `p.channel.presenceState()` satisfies `pred` (checked after each sync). */
async function stateWhere(p, pred, what) {
  while (!pred(p.channel.presenceState())) {
    await p.syncs.next(() => true, `sync until ${what}; state now ${JSON.stringify(p.channel.presenceState())}`)
  }
  return p.channel.presenceState()
}

const keysOf = (state) => Object.keys(state).sort()

scenario('a broadcast with ack on node 0 reaches members on nodes 1 and 2 exactly once', async (s) => {
  const topic = uniqueTopic('xnode')
  const a = s.client('A@0', on(0)).channel(topic, { config: { broadcast: { ack: true } } })
  const b = s.client('B@1', on(1)).channel(topic)
  const c = s.client('C@2', on(2, { vsn: '1.0.0' })).channel(topic)
  const [inA, inB, inC] = [a, b, c].map((ch) => collect(ch, 'broadcast', { event: '*' }))
  await Promise.all([a, b, c].map(subscribe))

  assert.equal(await a.send({ type: 'broadcast', event: 'hello', payload: { n: 1, s: 'héllo' } }), 'ok')
  assert.deepEqual((await inB.next((m) => m.event === 'hello', 'hello at node 1')).payload, { n: 1, s: 'héllo' })
  assert.deepEqual((await inC.next((m) => m.event === 'hello', 'hello at node 2 (v1)')).payload, { n: 1, s: 'héllo' })

  assert.equal(await a.send({ type: 'broadcast', event: 'marker', payload: {} }), 'ok')
  await inB.next((m) => m.event === 'marker', 'marker at node 1')
  await inC.next((m) => m.event === 'marker', 'marker at node 2')
  assert.deepEqual(inB.pending(), [], 'no duplicate at node 1')
  assert.deepEqual(inC.pending(), [], 'no duplicate at node 2')

  // The other way: node 1 to node 0. A (self false) never sees its own messages.
  await b.send({ type: 'broadcast', event: 'reply', payload: { from: 'b' } })
  assert.deepEqual((await inA.next((m) => m.event === 'reply', 'reply at node 0')).payload, { from: 'b' })
  assert.deepEqual(inA.pending(), [], 'A got nothing of its own')
})

scenario('with self true the sender gets its own broadcast once, not again from another node', async (s) => {
  const topic = uniqueTopic('xself')
  const a = s.client('A@0', on(0)).channel(topic, { config: { broadcast: { self: true, ack: true } } })
  const b = s.client('B@1', on(1)).channel(topic)
  const [inA, inB] = [a, b].map((ch) => collect(ch, 'broadcast', { event: '*' }))
  await Promise.all([subscribe(a), subscribe(b)])
  assert.equal(await a.send({ type: 'broadcast', event: 'echo', payload: { n: 7 } }), 'ok')
  assert.deepEqual((await inA.next((m) => m.event === 'echo', 'own echo')).payload, { n: 7 })
  await inB.next((m) => m.event === 'echo', 'echo at node 1')
  // B's reply travels through Redis after A's message came back to node 0.
  await b.send({ type: 'broadcast', event: 'after', payload: {} })
  await inA.next((m) => m.event === 'after', 'B reply at node 0')
  assert.deepEqual(inA.pending(), [], 'the echo arrived once')
})

scenario('binary payloads cross nodes byte for byte', async (s) => {
  const topic = uniqueTopic('xbinary')
  const a = s.client('A@2', on(2)).channel(topic, { config: { broadcast: { ack: true } } })
  const b = s.client('B@0', on(0)).channel(topic)
  const inB = collect(b, 'broadcast', { event: 'blob' })
  await Promise.all([subscribe(a), subscribe(b)])
  const bytes = new Uint8Array(300)
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7) & 0xff
  assert.equal(await a.send({ type: 'broadcast', event: 'blob', payload: bytes.buffer }), 'ok')
  const got = await inB.next(() => true, 'binary broadcast at node 0')
  assert.ok(got.payload instanceof ArrayBuffer, `payload should be an ArrayBuffer, got ${typeof got.payload}`)
  assert.deepEqual(new Uint8Array(got.payload), bytes)
})

scenario('REST broadcasts sent to node 2 reach subscribers on nodes 0 and 1', async (s) => {
  const topic = uniqueTopic('xrest')
  const listeners = [0, 1].map((i) => s.client(`L@${i}`, on(i)).channel(topic))
  const inboxes = listeners.map((ch) => collect(ch, 'broadcast', { event: '*' }))
  await Promise.all(listeners.map(subscribe))

  const sender = s.client('S@2', on(2)).channel(topic)
  assert.deepEqual(await sender.httpSend('via-http-send', { n: 1 }), { success: true })
  const res = await fetch(`${NODES[2]}/api/broadcast`, {
    method: 'POST',
    headers: {
      apikey: ANON_KEY,
      Authorization: `Bearer ${mintToken({ role: 'service_role', sub: 'server' })}`,
      'Content-Type': 'application/json',
    },
    body: JSON.stringify({ messages: [{ topic, event: 'via-batch', payload: { n: 2 } }] }),
  })
  assert.equal(res.status, 202, await res.text())
  for (const [i, inbox] of inboxes.entries()) {
    assert.deepEqual((await inbox.next((m) => m.event === 'via-http-send', `httpSend at node ${i}`)).payload, { n: 1 })
    assert.deepEqual((await inbox.next((m) => m.event === 'via-batch', `batch at node ${i}`)).payload, { n: 2 })
    assert.deepEqual(inbox.pending(), [], `nothing twice at node ${i}`)
  }
})

scenario('presence joins, late joiners, updates and leaves cross nodes', async (s) => {
  const topic = uniqueTopic('xpresence')
  const alice = presenceChannel(s.client('alice@0', on(0)), topic, 'alice')
  const bobClient = s.client('bob@1', on(1))
  const bob = presenceChannel(bobClient, topic, 'bob')
  // Dave watches from node 2 without tracking: once he has seen both joins, node 2 has them.
  const dave = presenceChannel(s.client('dave@2', on(2)), topic, 'dave')
  await Promise.all([alice, bob, dave].map((p) => subscribe(p.channel)))

  assert.equal(await alice.channel.track({ name: 'Alice' }), 'ok')
  const join = await bob.joins.next((j) => j.key === 'alice', 'join of alice at node 1')
  assert.equal(join.newPresences[0].name, 'Alice')
  assert.equal(await bob.channel.track({ name: 'Bob' }), 'ok')
  await alice.joins.next((j) => j.key === 'bob', 'join of bob at node 0')
  await dave.joins.next((j) => j.key === 'alice', 'join of alice at node 2')
  await dave.joins.next((j) => j.key === 'bob', 'join of bob at node 2')

  // A late joiner on the third node gets both in its first sync.
  const carol = presenceChannel(s.client('carol@2', on(2, { vsn: '1.0.0' })), topic, 'carol')
  await subscribe(carol.channel)
  const first = await carol.syncs.next(() => true, 'first sync at node 2')
  assert.ok(first, 'a sync after presence_state')
  assert.deepEqual(keysOf(carol.channel.presenceState()), ['alice', 'bob'])

  // An update replaces the meta everywhere (one meta, new payload): realtime-js reports
  // it as a leave of the old meta and a join of the new one.
  assert.equal(await alice.channel.track({ name: 'Alice', typing: true }), 'ok')
  for (const p of [bob, carol]) {
    const st = await stateWhere(p, (st) => st.alice?.[0]?.typing === true, 'alice typing')
    assert.equal(st.alice.length, 1, `one meta for alice, got ${JSON.stringify(st.alice)}`)
    const old = await p.leaves.next((l) => l.key === 'alice', 'leave of the old meta on update')
    assert.equal(old.leftPresences[0].typing, undefined)
  }

  // Untrack and disconnect are leaves on the other nodes, once each.
  assert.equal(await alice.channel.untrack(), 'ok')
  for (const p of [bob, carol]) {
    const leave = await p.leaves.next((l) => l.key === 'alice', 'leave of alice after untrack')
    assert.equal(leave.leftPresences[0].typing, true)
    await stateWhere(p, (st) => !st.alice, 'alice gone')
  }
  await bobClient.disconnect()
  for (const p of [alice, carol]) {
    await p.leaves.next((l) => l.key === 'bob', 'leave of bob after his socket closed')
    await stateWhere(p, (st) => !st.bob, 'bob gone')
  }
  assert.deepEqual(carol.leaves.pending((l) => l.key !== 'carol'), [], 'one leave per member')
})
