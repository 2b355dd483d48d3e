// Row changes from Postgres reaching realtime-js postgres_changes listeners, with filters
// and row-level security. Needs SWITCHBOARD_DATABASE_URL (a database with
// tests/clients/fixture.sql applied, as tests/real_clients.rs prepares it).

import assert from 'node:assert/strict'
import { after } from 'node:test'
import crypto from 'node:crypto'
import pg from 'pg'
import { postgresChangesFilter } from '@supabase/realtime-js'
import { scenario, subscribe, collect, uniqueTopic, mintToken, Inbox } from '../lib/harness.mjs'

const DATABASE_URL = process.env.SWITCHBOARD_DATABASE_URL
if (!DATABASE_URL) throw new Error('environment variable SWITCHBOARD_DATABASE_URL must be set')
const db = new pg.Pool({ connectionString: DATABASE_URL, max: 2 })
after(() => db.end())

let nextId = Number(BigInt.asUintN(40, BigInt(Date.now())) % 1_000_000_000n) * 1000
const newId = () => ++nextId

const COMMIT_TS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/

/** A channel with one postgres_changes listener whose events land in an inbox. */
function listen(client, filter) {
  const channel = client.channel(uniqueTopic('rows'))
  const inbox = new Inbox(`postgres_changes ${JSON.stringify(filter)}`)
  channel.on('postgres_changes', filter, (p) => inbox.push(p))
  const system = collect(channel, 'system', {})
  return { channel, inbox, system }
}

/** Subscribes and waits until the hub says the postgres_changes subscription is live. */
async function live(l) {
  await subscribe(l.channel)
  const note = await l.system.next((m) => m.extension === 'postgres_changes', 'postgres_changes system message')
  assert.equal(note.status, 'ok', `postgres_changes subscription: ${JSON.stringify(note)}`)
  assert.equal(note.message, 'Subscribed to PostgreSQL')
}

for (const vsn of ['2.0.0', '1.0.0']) {
  scenario(`vsn ${vsn}: an INSERT reaches the listener in Supabase's payload shape`, async (s) => {
    const l = listen(s.client('A', vsn === '2.0.0' ? {} : { vsn }), { event: 'INSERT', schema: 'public', table: 'notes' })
    await live(l)
    const id = newId()
    await db.query(
      `insert into public.notes (id, body, tags, meta) values ($1, 'hello', '{a,b}', '{"k":[1,2]}')`,
      [id]
    )
    const change = await l.inbox.next((c) => c.new?.id === id, `INSERT of note ${id}`)
    assert.equal(change.schema, 'public')
    assert.equal(change.table, 'notes')
    assert.equal(change.eventType, 'INSERT')
    assert.match(change.commit_timestamp, COMMIT_TS)
    assert.equal(change.errors, null)
    assert.equal(change.new.body, 'hello')
    assert.deepEqual(change.new.tags, ['a', 'b'])
    assert.deepEqual(change.new.meta, { k: [1, 2] })
    assert.equal(typeof change.new.created_at, 'string')
    assert.deepEqual(change.old, {})
  })
}

scenario('UPDATE and DELETE reach a * listener with old records', async (s) => {
  const l = listen(s.client('A'), { event: '*', schema: 'public', table: 'notes' })
  await live(l)
  const id = newId()
  await db.query(`insert into public.notes (id, body) values ($1, 'v1')`, [id])
  await db.query(`update public.notes set body = 'v2' where id = $1`, [id])
  await db.query(`delete from public.notes where id = $1`, [id])
  const ins = await l.inbox.next((c) => c.eventType === 'INSERT' && c.new.id === id, 'INSERT')
  const upd = await l.inbox.next((c) => c.eventType === 'UPDATE' && c.new.id === id, 'UPDATE')
  assert.equal(upd.new.body, 'v2')
  assert.equal(upd.old.id, id)
  const del = await l.inbox.next((c) => c.eventType === 'DELETE' && c.old.id === id, 'DELETE')
  assert.deepEqual(del.new, {})
  assert.ok(ins && upd && del)
})

scenario('an event-specific listener ignores other operations on the same channel', async (s) => {
  const client = s.client('A')
  const channel = client.channel(uniqueTopic('ops'))
  const deletes = new Inbox('DELETE listener')
  const all = new Inbox('* listener')
  channel.on('postgres_changes', { event: 'DELETE', schema: 'public', table: 'notes' }, (p) => deletes.push(p))
  channel.on('postgres_changes', { event: '*', schema: 'public', table: 'notes' }, (p) => all.push(p))
  const system = collect(channel, 'system', {})
  await live({ channel, system })
  const id = newId()
  await db.query(`insert into public.notes (id, body) values ($1, 'x')`, [id])
  await db.query(`delete from public.notes where id = $1`, [id])
  await all.next((c) => c.eventType === 'INSERT' && c.new.id === id, 'INSERT at *')
  await all.next((c) => c.eventType === 'DELETE' && c.old.id === id, 'DELETE at *')
  const del = await deletes.next(() => true, 'DELETE at DELETE listener')
  assert.equal(del.eventType, 'DELETE')
  assert.deepEqual(deletes.pending(), [])
})

scenario('a filter delivers only matching rows', async (s) => {
  const wanted = newId()
  const other = newId()
  const l = listen(s.client('A'), { event: 'INSERT', schema: 'public', table: 'notes', filter: `id=eq.${wanted}` })
  await live(l)
  // `other` commits first, so had it been delivered it would arrive first.
  await db.query(`insert into public.notes (id, body) values ($1, 'no')`, [other])
  await db.query(`insert into public.notes (id, body) values ($1, 'yes')`, [wanted])
  const got = await l.inbox.next(() => true, `INSERT of note ${wanted}`)
  assert.equal(got.new.id, wanted)
  assert.deepEqual(l.inbox.pending(), [])
})

scenario('postgresChangesFilter() match and imatch deliver only rows whose text matches', async (s) => {
  const tag = `t${newId()}`
  // One pattern the builder sends verbatim, one it quotes (it holds parentheses and `\\`).
  const plain = postgresChangesFilter().match('body', `^${tag}-[0-9]{2}$`)
  const quoted = postgresChangesFilter().imatch('body', `^${tag}-(ok|yes)\\y`)
  const a = listen(s.client('A'), { event: 'INSERT', schema: 'public', table: 'notes', filter: plain })
  const b = listen(s.client('B'), { event: 'INSERT', schema: 'public', table: 'notes', filter: quoted })
  await Promise.all([live(a), live(b)])
  for (const body of [`${tag}-420`, `x${tag}-42`, `${tag}-okay`, `${tag.toUpperCase()}-42`]) {
    await db.query(`insert into public.notes (id, body) values ($1, $2)`, [newId(), body])
  }
  const hitA = newId()
  const hitB = newId()
  await db.query(`insert into public.notes (id, body) values ($1, $2)`, [hitA, `${tag}-42`])
  await db.query(`insert into public.notes (id, body) values ($1, $2)`, [hitB, `${tag.toUpperCase()}-YES now`])
  assert.equal((await a.inbox.next(() => true, 'match INSERT')).new.id, hitA)
  assert.equal((await b.inbox.next(() => true, 'imatch INSERT')).new.id, hitB)
  assert.deepEqual(a.inbox.pending(), [])
  assert.deepEqual(b.inbox.pending(), [])
})

scenario('row-level security: each user receives only the todos they own', async (s) => {
  const alice = crypto.randomUUID()
  const bob = crypto.randomUUID()
  /** A user's channel listening to todos (RLS) and notes (no RLS) inserts. */
  const userChannel = (label, sub) => {
    const channel = s.client(label, { token: mintToken({ sub }) }).channel(uniqueTopic('rls'))
    const todos = new Inbox(`todos at ${label}`)
    const notes = new Inbox(`notes at ${label}`)
    channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'todos' }, (p) => todos.push(p))
    channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'notes' }, (p) => notes.push(p))
    const system = collect(channel, 'system', {})
    return { channel, system, todos, notes }
  }
  const a = userChannel('A', alice)
  const b = userChannel('B', bob)
  await Promise.all([live(a), live(b)])
  const bobsTodo = newId()
  const alicesTodo = newId()
  const marker = newId()
  await db.query(`insert into public.todos (id, owner, title) values ($1, $2, 'bob''s')`, [bobsTodo, bob])
  await db.query(`insert into public.todos (id, owner, title) values ($1, $2, 'alice''s')`, [alicesTodo, alice])
  // The marker commits last: once it arrives, both todos have been routed.
  await db.query(`insert into public.notes (id, body) values ($1, 'marker')`, [marker])
  for (const [user, own] of [[a, alicesTodo], [b, bobsTodo]]) {
    await user.notes.next((c) => c.new.id === marker, 'the marker note')
    assert.deepEqual(user.todos.pending().map((c) => c.new.id), [own])
  }
})

scenario('an anon subscriber gets nothing from a table whose policies exclude anon', async (s) => {
  const client = s.client('A') // connects and joins with the anon key only
  const channel = client.channel(uniqueTopic('anon'))
  const todos = new Inbox('todos at anon')
  const notes = new Inbox('notes at anon')
  channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'todos' }, (p) => todos.push(p))
  channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'notes' }, (p) => notes.push(p))
  const system = collect(channel, 'system', {})
  await live({ channel, system })
  const todo = newId()
  const note = newId()
  await db.query(`insert into public.todos (id, owner, title) values ($1, $2, 'secret')`, [todo, crypto.randomUUID()])
  await db.query(`insert into public.notes (id, body) values ($1, 'public')`, [note])
  await notes.next((c) => c.new.id === note, 'the later note')
  assert.deepEqual(todos.pending(), [], 'no todo reached anon')
})

scenario('a refreshed token changes which rows the subscriber may see', async (s) => {
  const alice = crypto.randomUUID()
  const bob = crypto.randomUUID()
  const client = s.client('A', { token: mintToken({ sub: alice }) })
  const channel = client.channel(uniqueTopic('switch-user'))
  const todos = new Inbox('todos')
  channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'todos' }, (p) => todos.push(p))
  const system = collect(channel, 'system', {})
  await live({ channel, system })
  const first = newId()
  await db.query(`insert into public.todos (id, owner, title) values ($1, $2, 'a1')`, [first, alice])
  assert.equal((await todos.next(() => true, "alice's first todo")).new.id, first)

  await client.setAuth(mintToken({ sub: bob }))
  // The hub applies the token when it reads the access_token push; a broadcast with ack on
  // a second channel of the same socket is ordered after it.
  const probe = client.channel(uniqueTopic('probe'), { config: { broadcast: { ack: true } } })
  await subscribe(probe)
  assert.equal(await probe.send({ type: 'broadcast', event: 'sync', payload: {} }), 'ok')
  const alicesLater = newId()
  const bobs = newId()
  await db.query(`insert into public.todos (id, owner, title) values ($1, $2, 'a2')`, [alicesLater, alice])
  await db.query(`insert into public.todos (id, owner, title) values ($1, $2, 'b1')`, [bobs, bob])
  const got = await todos.next(() => true, "bob's todo after the token switch")
  assert.equal(got.new.id, bobs, `expected bob's todo ${bobs}, got ${got.new.id} (alice's later todo is ${alicesLater})`)
})

scenario('realtime.send in SQL broadcasts to a public topic', async (s) => {
  const topic = uniqueTopic('db-send')
  const v2 = s.client('A').channel(topic)
  const v1 = s.client('B', { vsn: '1.0.0' }).channel(topic)
  const at2 = collect(v2, 'broadcast', { event: '*' })
  const at1 = collect(v1, 'broadcast', { event: '*' })
  await Promise.all([subscribe(v2), subscribe(v1)])
  await db.query(`select realtime.send($1::jsonb, 'from_db', $2, false)`, [JSON.stringify({ n: 5 }), topic])
  for (const inbox of [at2, at1]) {
    const got = await inbox.next(() => true, 'database broadcast')
    assert.equal(got.event, 'from_db')
    assert.equal(got.payload.n, 5)
  }
})

scenario('a bad filter or unknown table gets a postgres_changes system error and the channel stays open', async (s) => {
  for (const [label, listener] of [
    ['bad column', { event: '*', schema: 'public', table: 'notes', filter: 'no_such_column=eq.1' }],
    ['unknown table', { event: '*', schema: 'public', table: 'no_such_table' }],
    ['bad operator', { event: '*', schema: 'public', table: 'notes', filter: 'id=around.1' }],
  ]) {
    const channel = s.client(label).channel(uniqueTopic('bad'), { config: { broadcast: { self: true, ack: true } } })
    channel.on('postgres_changes', listener, () => {})
    const system = collect(channel, 'system', {})
    const own = collect(channel, 'broadcast', { event: '*' })
    await subscribe(channel)
    const note = await system.next((m) => m.extension === 'postgres_changes', `system message for ${label}`)
    assert.equal(note.status, 'error', `${label}: ${JSON.stringify(note)}`)
    assert.ok(note.message.length > 0)
    assert.equal(await channel.send({ type: 'broadcast', event: 'still', payload: {} }), 'ok')
    await own.next(() => true, `own broadcast after ${label}`)
  }
})
