// Token handling with realtime-js: refresh with setAuth, expired tokens, expiry while joined.

import assert from 'node:assert/strict'
import { scenario, subscribe, collect, uniqueTopic, mintToken } from '../lib/harness.mjs'

scenario('setAuth with a fresh token keeps the channel working', async (s) => {
  const topic = uniqueTopic('refresh')
  const a = s.client('A', { token: mintToken({ sub: 'alice' }) })
  const channel = a.channel(topic, { config: { broadcast: { ack: true } } })
  const peer = s.client('B').channel(topic)
  const atPeer = collect(peer, 'broadcast', { event: '*' })
  const statuses = await subscribe(channel)
  await subscribe(peer)

  await a.setAuth(mintToken({ sub: 'alice', expiresIn: 7200 }))
  assert.equal(await channel.send({ type: 'broadcast', event: 'after', payload: { n: 1 } }), 'ok')
  await atPeer.next((m) => m.event === 'after', 'broadcast sent after the refresh')
  assert.deepEqual(statuses.pending(), [], 'no status change after a valid refresh')
  assert.equal(channel.state, 'joined')
})

scenario('setAuth with an expired token closes the channel with a system error', async (s) => {
  const a = s.client('A', { token: mintToken({ sub: 'alice' }) })
  const channel = a.channel(uniqueTopic('expired-refresh'))
  const system = collect(channel, 'system', {})
  const statuses = await subscribe(channel)
  await a.setAuth(mintToken({ sub: 'alice', expiresIn: -3600 }))
  const err = await system.next((m) => m.status === 'error', 'system error after expired token')
  assert.equal(err.extension, 'system')
  assert.match(err.message, /expired/i)
  await statuses.next((x) => x.status === 'CLOSED', 'CLOSED after expired token')
})

scenario('a token that expires while joined closes the channel at expiry', async (s) => {
  const a = s.client('A', { token: mintToken({ sub: 'alice', expiresIn: 2 }) })
  const channel = a.channel(uniqueTopic('expiring'))
  const system = collect(channel, 'system', {})
  const statuses = await subscribe(channel)
  const err = await system.next((m) => m.status === 'error', 'system error at token expiry', 10000)
  assert.match(err.message, /expired/i)
  await statuses.next((x) => x.status === 'CLOSED', 'CLOSED at token expiry')
})

scenario('joining with an expired access token is refused with a reason', async (s) => {
  const a = s.client('A', { token: mintToken({ sub: 'alice', expiresIn: -60 }) })
  const channel = a.channel(uniqueTopic('expired-join'))
  await assert.rejects(subscribe(channel), (e) => {
    assert.match(e.message, /CHANNEL_ERROR/)
    assert.match(e.message, /expired/i)
    return true
  })
})

scenario('joining with a token signed by another secret is refused', async (s) => {
  const good = mintToken({ sub: 'mallory' })
  const [h, c] = good.split('.')
  const forged = `${h}.${c}.${Buffer.from('not the signature').toString('base64url')}`
  const channel = s.client('A', { token: forged }).channel(uniqueTopic('forged'))
  await assert.rejects(subscribe(channel), /CHANNEL_ERROR/)
})
