// supabase-js createClient(...).channel(...) against the hub, the way apps use it.

import assert from 'node:assert/strict'
import { scenario, subscribe, collect, uniqueTopic, PUBLISHABLE_KEY } from '../lib/harness.mjs'

scenario('two supabase-js clients exchange broadcasts and see each other in presence', async (s) => {
  const topic = uniqueTopic('sb')
  const alice = s.supabase('A').channel(topic, { config: { presence: { key: 'alice' } } })
  const bob = s.supabase('B').channel(topic, { config: { presence: { key: 'bob' } } })
  const atBob = collect(bob, 'broadcast', { event: 'hello' })
  const bobJoins = collect(bob, 'presence', { event: 'join' })
  collect(alice, 'presence', { event: 'sync' })
  await Promise.all([subscribe(alice), subscribe(bob)])

  await alice.send({ type: 'broadcast', event: 'hello', payload: { from: 'alice' } })
  assert.deepEqual((await atBob.next(() => true, 'hello at bob')).payload, { from: 'alice' })

  assert.equal(await alice.track({ online: true }), 'ok')
  const join = await bobJoins.next((j) => j.key === 'alice', 'alice presence at bob')
  assert.equal(join.newPresences[0].online, true)
})

scenario('supabase-js removeChannel leaves cleanly', async (s) => {
  const client = s.supabase('A')
  const channel = client.channel(uniqueTopic('sb-leave'))
  const statuses = await subscribe(channel)
  assert.equal(await client.removeChannel(channel), 'ok')
  await statuses.next((x) => x.status === 'CLOSED', 'CLOSED after removeChannel')
})

scenario('supabase-js with a publishable key listed in api_keys joins, broadcasts and tracks presence', async (s) => {
  assert.ok(PUBLISHABLE_KEY?.startsWith('sb_publishable_'), 'SWITCHBOARD_PUBLISHABLE_KEY is set')
  const topic = uniqueTopic('sb-pub')
  const client = s.supabase('P', { key: PUBLISHABLE_KEY })
  const channel = client.channel(topic, { config: { broadcast: { self: true, ack: true } } })
  const pings = collect(channel, 'broadcast', { event: 'ping' })
  const syncs = collect(channel, 'presence', { event: 'sync' })
  await subscribe(channel)
  assert.equal(await channel.send({ type: 'broadcast', event: 'ping', payload: { n: 1 } }), 'ok')
  assert.deepEqual((await pings.next(() => true, 'ping echoed')).payload, { n: 1 })
  assert.equal(await channel.track({ online: true }), 'ok')
  await syncs.next(() => Object.keys(channel.presenceState()).length === 1, 'own presence')
})
