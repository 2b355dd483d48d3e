// REST broadcast endpoints as realtime-js and plain HTTP clients use them.

import assert from 'node:assert/strict'
import { scenario, subscribe, collect, uniqueTopic, REALTIME_URL, ANON_KEY, mintToken } from '../lib/harness.mjs'

scenario('channel.httpSend reaches a subscriber', async (s) => {
  const topic = uniqueTopic('http-send')
  const listener = s.client('L').channel(topic)
  const inbox = collect(listener, 'broadcast', { event: '*' })
  await subscribe(listener)
  const sender = s.client('S').channel(topic)
  const result = await sender.httpSend('from-rest', { n: 42 })
  assert.deepEqual(result, { success: true })
  const got = await inbox.next(() => true, 'REST broadcast')
  assert.equal(got.event, 'from-rest')
  assert.deepEqual(got.payload, { n: 42 })
})

scenario('POST /api/broadcast with a bearer token returns 202 and reaches a subscriber', async (s) => {
  const topic = uniqueTopic('batch')
  const listener = s.client('L').channel(topic)
  const inbox = collect(listener, 'broadcast', { event: '*' })
  await subscribe(listener)
  const res = await fetch(`${REALTIME_URL}/api/broadcast`, {
    method: 'POST',
    headers: {
      apikey: ANON_KEY,
      Authorization: `Bearer ${mintToken({ role: 'service_role', sub: 'server' })}`,
      'Content-Type': 'application/json',
    },
    body: JSON.stringify({
      messages: [
        { topic, event: 'one', payload: { i: 1 } },
        { topic, event: 'two', payload: { i: 2 } },
      ],
    }),
  })
  assert.equal(res.status, 202, await res.text())
  assert.deepEqual((await inbox.next((m) => m.event === 'one', 'first batch message')).payload, { i: 1 })
  assert.deepEqual((await inbox.next((m) => m.event === 'two', 'second batch message')).payload, { i: 2 })
})

scenario('send on an unjoined channel falls back to REST and reaches a subscriber', async (s) => {
  const topic = uniqueTopic('fallback')
  const listener = s.client('L').channel(topic)
  const inbox = collect(listener, 'broadcast', { event: '*' })
  await subscribe(listener)
  const sender = s.client('S').channel(topic)
  assert.equal(await sender.send({ type: 'broadcast', event: 'fb', payload: { x: 1 } }), 'ok')
  assert.deepEqual((await inbox.next(() => true, 'fallback broadcast')).payload, { x: 1 })
})

scenario('POST /api/broadcast without credentials is refused with 401', async () => {
  const res = await fetch(`${REALTIME_URL}/api/broadcast`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ messages: [{ topic: 'x', event: 'y', payload: {} }] }),
  })
  assert.equal(res.status, 401)
})
