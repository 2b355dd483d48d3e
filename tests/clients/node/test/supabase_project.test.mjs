// A project moved from Supabase unchanged: tests/clients/supabase_project.sql sets it up the
// way its Supabase migrations would (the supabase_realtime publication, REPLICA IDENTITY,
// realtime.messages policies with realtime.topic() and auth.uid(), broadcast_changes), and
// realtime-js / supabase-js use it exactly as they would against Supabase. Needs
// SWITCHBOARD_DATABASE_URL, as tests/real_clients.rs prepares it.

import assert from 'node:assert/strict'
import { after } from 'node:test'
import crypto from 'node:crypto'
import pg from 'pg'
import {
  scenario,
  subscribe,
  collect,
  uniqueTopic,
  mintToken,
  Inbox,
  REALTIME_URL,
  JWT_SECRET,
} from '../lib/harness.mjs'

const DATABASE_URL = process.env.SWITCHBOARD_DATABASE_URL
if (!DATABASE_URL) throw new Error('environment variable SWITCHBOARD_DATABASE_URL must be set')
const db = new pg.Pool({ connectionString: DATABASE_URL, max: 2 })
after(() => db.end())

let nextId = Number(BigInt.asUintN(40, BigInt(Date.now())) % 1_000_000_000n) * 1000
const newId = () => ++nextId

/** A user id with a token (role authenticated). */
function user(claims = {}) {
  const sub = crypto.randomUUID()
  return { sub, token: mintToken({ sub }), ...claims }
}

/** A private room whose members are `users` (`{ sub }` or `{ sub, canSend }`). */
async function room(users) {
  const name = uniqueTopic('room')
  for (const u of users) {
    await db.query('insert into public.room_members (room, user_id, can_send) values ($1, $2, $3)', [
      name,
      u.sub,
      u.canSend ?? true,
    ])
  }
  return name
}

/** Waits for the postgres_changes "Subscribed to PostgreSQL" system message. */
async function live(channel) {
  const system = collect(channel, 'system', {})
  await subscribe(channel)
  const note = await system.next((m) => m.extension === 'postgres_changes', 'Subscribed to PostgreSQL')
  assert.equal(note.status, 'ok', JSON.stringify(note))
  return system
}

scenario('supabase-js: old records follow REPLICA IDENTITY on tables in the publication', async (s) => {
  const supabase = s.supabase('A')
  await supabase.realtime.setAuth(mintToken({ sub: crypto.randomUUID() }))
  const changes = new Inbox('changes')
  const channel = supabase
    .channel(uniqueTopic('identity'))
    .on('postgres_changes', { event: '*', schema: 'public', table: 'posts' }, (p) => changes.push(p))
    .on('postgres_changes', { event: '*', schema: 'public', table: 'tickets' }, (p) => changes.push(p))
  await live(channel)
  const post = newId()
  const ticket = newId()
  await db.query(`insert into public.posts (id, body) values ($1, 'first')`, [post])
  await db.query(`update public.posts set likes = 1 where id = $1`, [post])
  await db.query(`delete from public.posts where id = $1`, [post])
  await db.query(`insert into public.tickets (id, title) values ($1, 'broken')`, [ticket])
  await db.query(`update public.tickets set status = 'done' where id = $1`, [ticket])
  await db.query(`delete from public.tickets where id = $1`, [ticket])

  const full = { id: post, author: null, body: 'first', likes: 0 }
  const upd = await changes.next((c) => c.table === 'posts' && c.eventType === 'UPDATE', 'posts UPDATE')
  assert.deepEqual(upd.old, full, 'FULL: the whole old row')
  assert.deepEqual(upd.new, { ...full, likes: 1 })
  const del = await changes.next((c) => c.table === 'posts' && c.eventType === 'DELETE', 'posts DELETE')
  assert.deepEqual(del.old, { ...full, likes: 1 })

  const tupd = await changes.next((c) => c.table === 'tickets' && c.eventType === 'UPDATE', 'tickets UPDATE')
  assert.deepEqual(tupd.old, { id: ticket }, 'DEFAULT: only the primary key')
  assert.equal(tupd.new.status, 'done')
  const tdel = await changes.next((c) => c.table === 'tickets' && c.eventType === 'DELETE', 'tickets DELETE')
  assert.deepEqual(tdel.old, { id: ticket })
  assert.equal(tdel.errors, null)
})

scenario('realtime-js select: only the chosen columns and the key arrive', async (s) => {
  const client = s.client('A', { token: mintToken({ sub: crypto.randomUUID() }) })
  const changes = new Inbox('posts')
  const channel = client
    .channel(uniqueTopic('select'))
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'posts', select: ['body'] }, (p) =>
      changes.push(p)
    )
  await live(channel)
  const id = newId()
  await db.query(`insert into public.posts (id, body, likes) values ($1, 'short', 7)`, [id])
  const got = await changes.next((c) => c.new.id === id, 'the selected INSERT')
  assert.deepEqual(got.new, { id, body: 'short' })
})

scenario('private rooms: members join, others are refused with Supabase\'s reason', async (s) => {
  const alice = user()
  const mallory = user()
  const name = await room([alice])
  const joined = s.client('A', { token: alice.token }).channel(name, { config: { private: true } })
  await subscribe(joined)
  const refused = s.client('M', { token: mallory.token }).channel(name, { config: { private: true } })
  await assert.rejects(subscribe(refused), (e) => {
    assert.match(e.message, /CHANNEL_ERROR/)
    assert.match(e.message, new RegExp(`Unauthorized: You do not have permissions to read from this Channel topic: ${name}`))
    return true
  })
  // A public channel of the same name is another room: the member's private broadcast
  // does not reach it.
  const outsider = s.client('P').channel(name)
  const atOutsider = collect(outsider, 'broadcast', { event: '*' })
  await subscribe(outsider)
  const bob = user()
  await db.query('insert into public.room_members (room, user_id) values ($1, $2)', [name, bob.sub])
  const peer = s.client('B', { token: bob.token }).channel(name, { config: { private: true } })
  const atPeer = collect(peer, 'broadcast', { event: '*' })
  await subscribe(peer)
  await joined.send({ type: 'broadcast', event: 'hi', payload: { n: 1 } })
  assert.deepEqual((await atPeer.next(() => true, 'private broadcast at bob')).payload, { n: 1 })
  assert.deepEqual(atOutsider.pending(), [])
})

scenario('a member without send rights is dropped silently; the ack times out', async (s) => {
  const writer = user()
  const reader = { ...user(), canSend: false }
  const name = await room([writer, reader])
  const w = s.client('W', { token: writer.token }).channel(name, { config: { private: true, broadcast: { ack: true } } })
  const r = s.client('R', { token: reader.token }).channel(name, { config: { private: true, broadcast: { ack: true } } })
  const atWriter = collect(w, 'broadcast', { event: '*' })
  const atReader = collect(r, 'broadcast', { event: '*' })
  await Promise.all([subscribe(w), subscribe(r)])
  assert.equal(await r.send({ type: 'broadcast', event: 'nope', payload: {} }, { timeout: 1500 }), 'timed out')
  assert.equal(await w.send({ type: 'broadcast', event: 'yes', payload: { n: 2 } }), 'ok')
  assert.deepEqual((await atReader.next(() => true, 'the writer\'s message')).payload, { n: 2 })
  assert.deepEqual(atWriter.pending(), [], 'the refused message reached nobody')
})

scenario('a token refresh after losing membership closes the channel', async (s) => {
  const alice = user()
  const name = await room([alice])
  const client = s.client('A', { token: alice.token })
  const channel = client.channel(name, { config: { private: true } })
  const system = collect(channel, 'system', {})
  const statuses = await subscribe(channel)
  await db.query('delete from public.room_members where room = $1', [name])
  await client.setAuth(mintToken({ sub: alice.sub, expiresIn: 7200 }))
  const err = await system.next((m) => m.extension === 'system', 'system message after losing access')
  assert.equal(err.status, 'error')
  assert.equal(err.message, `You do not have permissions to read from this Channel topic: ${name}`)
  await statuses.next((x) => x.status === 'CLOSED', 'CLOSED')
})

scenario('replay: stored messages first, marked replayed, then live ones', async (s) => {
  const alice = user()
  const name = await room([alice])
  for (const n of [1, 2, 3]) {
    await db.query(`select realtime.send($1::jsonb, 'note', $2)`, [JSON.stringify({ n }), name])
  }
  const since = Date.now() - 60_000
  const channel = s
    .client('A', { token: alice.token })
    .channel(name, { config: { private: true, broadcast: { replay: { since, limit: 2 } } } })
  const notes = collect(channel, 'broadcast', { event: 'note' })
  const system = collect(channel, 'system', {})
  await subscribe(channel)
  for (const n of [2, 3]) {
    const m = await notes.next(() => true, `replayed note ${n}`)
    assert.equal(m.payload.n, n)
    assert.equal(m.meta.replayed, true)
    assert.equal(m.meta.id, m.payload.id)
  }
  const left = await system.next((m) => m.extension === 'broadcast', 'the left-out note')
  assert.equal(left.status, 'ok')
  assert.match(left.message, /newest 2 of 3/)
  await db.query(`select realtime.send('{"n":4}'::jsonb, 'note', $1)`, [name])
  const live = await notes.next(() => true, 'live note')
  assert.equal(live.payload.n, 4)
  assert.equal(live.meta.replayed, undefined)
  assert.equal(typeof live.meta.id, 'string')
})

scenario('httpSend on a private channel: members 202, others refused', async (s) => {
  const alice = user()
  const mallory = user()
  const name = await room([alice])
  const listener = s.client('L', { token: alice.token }).channel(name, { config: { private: true } })
  const inbox = collect(listener, 'broadcast', { event: '*' })
  await subscribe(listener)
  const sender = s.client('A', { token: alice.token }).channel(name, { config: { private: true } })
  assert.deepEqual(await sender.httpSend('from-rest', { ok: true }), { success: true })
  assert.deepEqual((await inbox.next(() => true, 'REST private broadcast')).payload, { ok: true })
  const stranger = s.client('M', { token: mallory.token }).channel(name, { config: { private: true } })
  await assert.rejects(stranger.httpSend('from-mallory', {}), /Unauthorized/)
  // The batch endpoint drops it and still answers 202.
  const res = await fetch(`${REALTIME_URL}/api/broadcast`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${mallory.token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ messages: [{ topic: name, event: 'batch', payload: {}, private: true }] }),
  })
  assert.equal(res.status, 202)
  assert.deepEqual(inbox.pending(), [])
})

/** supabase-js signed in as a member of the private 'tickets' topic, listening to its
 * INSERT broadcasts (`config` merged into the channel's). */
async function ticketsChannel(s, broadcast = {}) {
  const alice = user()
  await db.query("insert into public.room_members (room, user_id) values ('tickets', $1)", [alice.sub])
  const supabase = s.supabase('A')
  await supabase.realtime.setAuth(alice.token)
  const inserts = new Inbox('ticket broadcasts')
  const channel = supabase
    .channel('tickets', { config: { private: true, broadcast } })
    .on('broadcast', { event: 'INSERT' }, (m) => inserts.push(m))
  return { channel, inserts }
}

scenario('supabase-js: a row trigger calling broadcast_changes reaches the private topic', async (s) => {
  const { channel, inserts } = await ticketsChannel(s)
  await subscribe(channel)
  const id = newId()
  await db.query(`insert into public.tickets (id, title) values ($1, 'from a trigger')`, [id])
  const m = await inserts.next((x) => x.payload.record?.id === id, 'the ticket INSERT broadcast')
  assert.equal(m.payload.operation, 'INSERT')
  assert.equal(m.payload.schema, 'public')
  assert.equal(m.payload.table, 'tickets')
  assert.equal(m.payload.old_record, null)
  assert.equal(m.payload.record.title, 'from a trigger')
  assert.equal(m.meta.id, m.payload.id)
})

scenario('replication_ready: the channel is told the hub reads the log, then database broadcasts arrive', async (s) => {
  // How Supabase's own end-to-end checks open broadcast-from-database channels: opt in,
  // wait for the system ok, then write.
  const { channel, inserts } = await ticketsChannel(s, { replication_ready: true })
  const system = collect(channel, 'system', {})
  await subscribe(channel)
  const ready = await system.next((m) => m.extension === 'system', 'replication ready')
  assert.deepEqual(ready, {
    extension: 'system',
    status: 'ok',
    message: 'Replication connection established',
    channel: 'tickets',
  })
  const id = newId()
  await db.query(`insert into public.tickets (id, title) values ($1, 'after ready')`, [id])
  const m = await inserts.next((x) => x.payload.record?.id === id, 'the ticket INSERT broadcast')
  assert.equal(m.payload.record.title, 'after ready')
})

scenario('a row policy that raises for one user costs only that user', async (s) => {
  const team = crypto.randomUUID()
  const mint = (teamClaim) => {
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url')
    const now = Math.floor(Date.now() / 1000)
    const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ role: 'authenticated', sub: crypto.randomUUID(), team: teamClaim, exp: now + 3600 })}`
    return `${head}.${crypto.createHmac('sha256', JWT_SECRET).update(head).digest('base64url')}`
  }
  const listen = (label, token) => {
    const notes = new Inbox(`team notes at ${label}`)
    const channel = s
      .client(label, { token })
      .channel(uniqueTopic('team'))
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'team_notes' }, (p) => notes.push(p))
    return { channel, notes }
  }
  const good = listen('good', mint(team))
  const bad = listen('bad', mint('not-a-uuid'))
  await live(good.channel)
  const badSystem = await live(bad.channel)
  const first = newId()
  const second = newId()
  await db.query(`insert into public.team_notes (id, team, body) values ($1, $2, 'one')`, [first, team])
  await db.query(`insert into public.team_notes (id, team, body) values ($1, $2, 'two')`, [second, team])
  await good.notes.next((c) => c.new.id === first, 'first note at the good user')
  await good.notes.next((c) => c.new.id === second, 'second note at the good user')
  const problem = await badSystem.next((m) => m.extension === 'postgres_changes', 'the policy problem')
  assert.equal(problem.status, 'ok')
  assert.match(problem.message, /team members read team notes/)
  assert.match(problem.message, /invalid input syntax for type uuid/)
  assert.deepEqual(bad.notes.pending(), [])
})
