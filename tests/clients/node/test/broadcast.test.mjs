// Broadcast between real realtime-js clients: ack, self, fan-out, binary payloads and
// mixed serializers (v2 binary frames, v1 JSON objects).

import assert from 'node:assert/strict'
import { scenario, subscribe, collect, uniqueTopic } from '../lib/harness.mjs'

const opts = (vsn) => (vsn === '2.0.0' ? {} : { vsn })

for (const vsn of ['2.0.0', '1.0.0']) {
  scenario(`vsn ${vsn}: a broadcast with ack resolves ok`, async (s) => {
    const client = s.client('A', opts(vsn))
    const channel = client.channel(uniqueTopic('ack'), { config: { broadcast: { ack: true } } })
    await subscribe(channel)
    const result = await channel.send({ type: 'broadcast', event: 'ping', payload: { n: 1 } })
    assert.equal(result, 'ok')
  })

  scenario(`vsn ${vsn}: with self true the sender receives its own broadcast`, async (s) => {
    const client = s.client('A', opts(vsn))
    const channel = client.channel(uniqueTopic('self'), { config: { broadcast: { self: true } } })
    const inbox = collect(channel, 'broadcast', { event: 'echo' })
    await subscribe(channel)
    assert.equal(await channel.send({ type: 'broadcast', event: 'echo', payload: { n: 7 } }), 'ok')
    const got = await inbox.next(() => true, 'own broadcast')
    assert.equal(got.event, 'echo')
    assert.deepEqual(got.payload, { n: 7 })
  })
}

for (const [va, vb] of [
  ['2.0.0', '2.0.0'],
  ['1.0.0', '1.0.0'],
  ['2.0.0', '1.0.0'],
]) {
  scenario(`a vsn ${va} and a vsn ${vb} client receive each other's broadcasts`, async (s) => {
    const topic = uniqueTopic('pair')
    const a = s.client('A', opts(va)).channel(topic)
    const b = s.client('B', opts(vb)).channel(topic)
    const inboxA = collect(a, 'broadcast', { event: 'msg' })
    const inboxB = collect(b, 'broadcast', { event: '*' })
    await Promise.all([subscribe(a), subscribe(b)])

    await a.send({ type: 'broadcast', event: 'msg', payload: { from: 'a', text: 'héllo' } })
    const atB = await inboxB.next(() => true, 'broadcast from A')
    assert.equal(atB.type, 'broadcast')
    assert.equal(atB.event, 'msg')
    assert.deepEqual(atB.payload, { from: 'a', text: 'héllo' })

    await b.send({ type: 'broadcast', event: 'msg', payload: { from: 'b', list: [1, 2] } })
    const atA = await inboxA.next(() => true, 'broadcast from B')
    assert.deepEqual(atA.payload, { from: 'b', list: [1, 2] })
  })
}

scenario('with self false the sender does not receive its own broadcast', async (s) => {
  const topic = uniqueTopic('noself')
  const a = s.client('A').channel(topic, { config: { broadcast: { ack: true } } })
  const b = s.client('B').channel(topic)
  const inboxA = collect(a, 'broadcast', { event: '*' })
  const inboxB = collect(b, 'broadcast', { event: '*' })
  await Promise.all([subscribe(a), subscribe(b)])
  // The ack comes after the hub has fanned the message out, so anything A would get of
  // its own message is queued before B's reply below.
  assert.equal(await a.send({ type: 'broadcast', event: 'first', payload: {} }), 'ok')
  await inboxB.next((m) => m.event === 'first', 'A broadcast at B')
  await b.send({ type: 'broadcast', event: 'second', payload: {} })
  await inboxA.next((m) => m.event === 'second', 'B broadcast at A')
  assert.deepEqual(inboxA.pending((m) => m.event === 'first'), [])
})

scenario('listeners only fire for their event name (case-insensitively)', async (s) => {
  const topic = uniqueTopic('events')
  const a = s.client('A').channel(topic)
  const b = s.client('B').channel(topic)
  const typing = collect(b, 'broadcast', { event: 'typing' })
  const all = collect(b, 'broadcast', { event: '*' })
  await Promise.all([subscribe(a), subscribe(b)])
  await a.send({ type: 'broadcast', event: 'cursor', payload: { x: 1 } })
  await a.send({ type: 'broadcast', event: 'TYPING', payload: { on: true } })
  await all.next((m) => m.event === 'cursor', 'cursor event')
  await all.next((m) => m.event === 'TYPING', 'TYPING event')
  const t = await typing.next(() => true, 'typing listener')
  assert.equal(t.event, 'TYPING')
  assert.deepEqual(typing.pending(), [])
})

scenario('binary ArrayBuffer payloads travel between v2 clients byte for byte', async (s) => {
  const topic = uniqueTopic('binary')
  const a = s.client('A').channel(topic, { config: { broadcast: { ack: true } } })
  const b = s.client('B').channel(topic)
  const inboxB = collect(b, 'broadcast', { event: 'blob' })
  await Promise.all([subscribe(a), subscribe(b)])
  const bytes = new Uint8Array(300)
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7) & 0xff
  assert.equal(await a.send({ type: 'broadcast', event: 'blob', payload: bytes.buffer }), 'ok')
  const got = await inboxB.next(() => true, 'binary broadcast')
  assert.ok(got.payload instanceof ArrayBuffer, `payload should be an ArrayBuffer, got ${typeof got.payload}`)
  assert.deepEqual(new Uint8Array(got.payload), bytes)
})

scenario('a broadcast is delivered to every subscriber of the topic and no other', async (s) => {
  const topic = uniqueTopic('fanout')
  const sender = s.client('S').channel(topic)
  const receivers = ['R1', 'R2', 'R3'].map((l) => s.client(l).channel(topic))
  const other = s.client('O').channel(uniqueTopic('elsewhere'))
  const inboxes = receivers.map((r) => collect(r, 'broadcast', { event: '*' }))
  const otherInbox = collect(other, 'broadcast', { event: '*' })
  await Promise.all([sender, ...receivers, other].map(subscribe))
  await sender.send({ type: 'broadcast', event: 'all', payload: { k: 'v' } })
  for (const inbox of inboxes) {
    const got = await inbox.next(() => true, 'fan-out copy')
    assert.deepEqual(got.payload, { k: 'v' })
  }
  assert.deepEqual(otherInbox.pending(), [])
})

scenario('an oversized broadcast with ack resolves error and the channel keeps working', async (s) => {
  const topic = uniqueTopic('too-big')
  const a = s.client('A').channel(topic, { config: { broadcast: { ack: true } } })
  const b = s.client('B').channel(topic)
  const atB = collect(b, 'broadcast', { event: '*' })
  await Promise.all([subscribe(a), subscribe(b)])
  const big = 'x'.repeat(300 * 1024) // over the hub's default 256 KiB broadcast limit
  assert.equal(await a.send({ type: 'broadcast', event: 'big', payload: { big } }), 'error')
  assert.equal(await a.send({ type: 'broadcast', event: 'small', payload: { n: 1 } }), 'ok')
  const got = await atB.next(() => true, 'the small broadcast')
  assert.equal(got.event, 'small', 'the oversized message was not delivered')
  assert.equal(a.state, 'joined')
})

scenario('a payload holding a lone surrogate (text cut through an emoji) is delivered', async (s) => {
  const topic = uniqueTopic('surrogate')
  const a = s.client('A').channel(topic, { config: { broadcast: { ack: true } } })
  const b = s.client('B').channel(topic)
  const inboxB = collect(b, 'broadcast', { event: 'cut' })
  await Promise.all([subscribe(a), subscribe(b)])
  const text = '😀 hello'.slice(0, 1)
  assert.equal(await a.send({ type: 'broadcast', event: 'cut', payload: { text, after: 'ok' } }), 'ok')
  const got = await inboxB.next(() => true, 'the cut broadcast')
  // serde cannot hold a lone surrogate: it arrives as U+FFFD, the rest intact.
  assert.deepEqual(got.payload, { text: '\ufffd', after: 'ok' })
})
