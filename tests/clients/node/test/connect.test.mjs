// Connecting, heartbeats, joining and leaving with realtime-js on both serializers.

import assert from 'node:assert/strict'
import { scenario, subscribe, collect, uniqueTopic, Inbox } from '../lib/harness.mjs'

for (const vsn of ['2.0.0', '1.0.0']) {
  scenario(`a vsn ${vsn} client joins a channel and reports SUBSCRIBED`, async (s) => {
    const client = s.client('A', vsn === '2.0.0' ? {} : { vsn })
    assert.match(client.endpointURL(), new RegExp(`vsn=${vsn.replaceAll('.', '\\.')}`))
    const channel = client.channel(uniqueTopic('join'))
    await subscribe(channel)
    assert.equal(channel.state, 'joined')
  })

  scenario(`a vsn ${vsn} client gets an ok reply to its heartbeat`, async (s) => {
    const beats = new Inbox('heartbeat statuses')
    const client = s.client('A', {
      ...(vsn === '2.0.0' ? {} : { vsn }),
      heartbeatCallback: (status) => beats.push(status),
    })
    await subscribe(client.channel(uniqueTopic('heartbeat')))
    await client.sendHeartbeat()
    await beats.next((st) => st === 'sent', 'heartbeat sent')
    const outcome = await beats.next((st) => st !== 'sent', 'heartbeat outcome')
    assert.equal(outcome, 'ok')
  })

  scenario(`a vsn ${vsn} client leaving gets ok and reports CLOSED`, async (s) => {
    const client = s.client('A', vsn === '2.0.0' ? {} : { vsn })
    const channel = client.channel(uniqueTopic('leave'))
    const statuses = await subscribe(channel)
    assert.equal(await channel.unsubscribe(), 'ok')
    await statuses.next((x) => x.status === 'CLOSED', 'CLOSED after leave')
    assert.equal(channel.state, 'closed')
  })
}

scenario('one client joins several channels on one socket', async (s) => {
  const client = s.client('A')
  const a = client.channel(uniqueTopic('multi-a'))
  const b = client.channel(uniqueTopic('multi-b'))
  await Promise.all([subscribe(a), subscribe(b)])
  assert.equal(await a.unsubscribe(), 'ok')
  // The other channel keeps working after its sibling left.
  const c = client.channel(uniqueTopic('multi-c'), { config: { broadcast: { ack: true } } })
  await subscribe(c)
  assert.equal(await c.send({ type: 'broadcast', event: 'e', payload: {} }), 'ok')
  assert.equal(b.state, 'joined')
})

scenario('after its socket drops, realtime-js reconnects, rejoins and receives again', async (s) => {
  const topic = uniqueTopic('reconnect')
  const a = s.client('A').channel(topic)
  const b = s.client('B').channel(topic)
  const atA = collect(a, 'broadcast', { event: '*' })
  const statuses = await subscribe(a)
  await subscribe(b)
  const firstJoinRef = a.joinPush.ref
  s.trace.sockets.A.terminate() // abrupt loss, as on a network failure
  await statuses.next((x) => x.status === 'CHANNEL_ERROR', 'CHANNEL_ERROR after the drop')
  await statuses.next((x) => x.status === 'SUBSCRIBED', 'SUBSCRIBED again after reconnect', 8000)
  assert.notEqual(a.joinPush.ref, firstJoinRef, 'the rejoin uses a new join_ref')
  await b.send({ type: 'broadcast', event: 'again', payload: { n: 2 } })
  assert.deepEqual((await atA.next(() => true, 'broadcast after rejoin')).payload, { n: 2 })
})

scenario('a message over the size limit closes the socket with 1009, which realtime-js sees, and it rejoins', async (s) => {
  const client = s.client('A')
  const channel = client.channel(uniqueTopic('oversize'))
  const statuses = await subscribe(channel)
  const closes = new Inbox('socket closes')
  s.trace.sockets.A.addEventListener('close', (ev) => closes.push({ code: ev.code, reason: ev.reason }))
  // 6 MB against the default max_frame_bytes of 5,000,000.
  channel.send({ type: 'broadcast', event: 'big', payload: { x: 'a'.repeat(6_000_000) } })
  assert.deepEqual(await closes.next(() => true, 'the close'), { code: 1009, reason: 'message too large' })
  await statuses.next((x) => x.status === 'SUBSCRIBED', 'SUBSCRIBED again after reconnect', 8000)
})
