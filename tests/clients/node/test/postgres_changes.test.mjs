// Joining with postgres_changes listeners: the join reply must echo each listener so
// realtime-js can bind the server ids (otherwise it reports a bindings mismatch).

import assert from 'node:assert/strict'
import { scenario, subscribe, collect, uniqueTopic } from '../lib/harness.mjs'

for (const vsn of ['2.0.0', '1.0.0']) {
  scenario(`vsn ${vsn}: a join with postgres_changes listeners binds integer ids`, async (s) => {
    const client = s.client('A', vsn === '2.0.0' ? {} : { vsn })
    const channel = client.channel(uniqueTopic('pg'))
    const system = collect(channel, 'system', {})
    channel
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'todos' }, () => {})
      .on('postgres_changes', { event: '*', schema: 'public', table: 'todos', filter: 'id=eq.1' }, () => {})
      .on('postgres_changes', { event: 'DELETE', schema: 'public' }, () => {})
    await subscribe(channel)
    const ids = channel.bindings.postgres_changes.map((b) => b.id)
    assert.equal(ids.length, 3)
    for (const id of ids) assert.ok(Number.isInteger(id), `id ${JSON.stringify(id)} is an integer`)
    // The hub follows up with a postgres_changes system message: ok when subscribed, or an
    // error (for instance when no database is configured). Either way the channel stays open.
    const note = await system.next((m) => m.extension === 'postgres_changes', 'postgres_changes system message')
    assert.ok(['ok', 'error'].includes(note.status), JSON.stringify(note))
    assert.equal(note.channel, channel.subTopic)
    assert.equal(channel.state, 'joined')
  })
}

scenario('identical listeners on two sockets get the same id', async (s) => {
  const topic = uniqueTopic('pg-ids')
  const listen = (c) =>
    c.channel(topic).on('postgres_changes', { event: 'UPDATE', schema: 'public', table: 'todos', filter: 'done=eq.true' }, () => {})
  const a = listen(s.client('A'))
  const b = listen(s.client('B'))
  await Promise.all([subscribe(a), subscribe(b)])
  assert.equal(a.bindings.postgres_changes[0].id, b.bindings.postgres_changes[0].id)
})

scenario('broadcast still works on a channel that also has postgres_changes listeners', async (s) => {
  const topic = uniqueTopic('pg-broadcast')
  const a = s.client('A').channel(topic, { config: { broadcast: { self: true, ack: true } } })
  a.on('postgres_changes', { event: '*', schema: 'public', table: 'todos' }, () => {})
  const inbox = collect(a, 'broadcast', { event: 'b' })
  await subscribe(a)
  assert.equal(await a.send({ type: 'broadcast', event: 'b', payload: { ok: true } }), 'ok')
  await inbox.next(() => true, 'own broadcast')
})
