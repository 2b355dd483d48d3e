// Supabase's own end-to-end Realtime checks (supabase/realtime test/e2e/realtime-check.ts),
// the functional suites, ported to the hub: broadcast, presence, authorization, broadcast
// changes, postgres changes, postgres-changes filters, broadcast replay, broadcast binary
// and the postgres changes system message. tests/clients/supabase_e2e.sql is that file's
// setup(). Assertions are the original's; the adaptations, for a machine without
// PostgREST or GoTrue: rows are written with `pg` instead of `supabase.from(...)`, and the
// signed-in user is a token minted for a random `sub` (role authenticated) given to
// `supabase.realtime.setAuth`. Each test has its own client instead of the e2e's shared
// one. Test names are "<e2e suite> / <e2e test>". Needs SWITCHBOARD_DATABASE_URL, as
// tests/real_clients.rs prepares it.

import assert from 'node:assert/strict'
import { after } from 'node:test'
import crypto from 'node:crypto'
import pg from 'pg'
import { postgresChangesFilter } from '@supabase/supabase-js'
import { scenario, subscribe, collect, mintToken, Inbox, ANON_KEY, PROJECT_URL } from '../lib/harness.mjs'

const DATABASE_URL = process.env.SWITCHBOARD_DATABASE_URL
if (!DATABASE_URL) throw new Error('environment variable SWITCHBOARD_DATABASE_URL must be set')
const db = new pg.Pool({ connectionString: DATABASE_URL, max: 4 })
after(() => db.end())

const BROADCAST_CONFIG = { config: { broadcast: { self: true } } }
const REPLICATION_READY_CONFIG = { config: { private: true, broadcast: { replication_ready: true } } }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const randomTopic = () => 'topic:' + crypto.randomUUID()
const tagOf = () => crypto.randomUUID().replace(/-/g, '')

/** A supabase-js client signed in as a fresh authenticated user (the e2e's signInUser). */
async function signedIn(s, label = 'U') {
  const supabase = s.supabase(label)
  await supabase.realtime.setAuth(mintToken({ sub: crypto.randomUUID() }))
  return supabase
}

/** The e2e's openPostgresChannel: joined, then a system message with status ok. */
async function openPostgresChannel(channel) {
  const system = collect(channel, 'system', {})
  await subscribe(channel)
  return system.next((m) => m.status === 'ok', 'system ok')
}

/** The e2e's openReplicationChannel: joined, then the replication-ready system message. */
async function openReplicationChannel(channel) {
  const system = collect(channel, 'system', {})
  await subscribe(channel)
  return system.next((m) => m.extension === 'system' && m.status === 'ok', 'replication ready')
}

// Row writes the e2e does through PostgREST (`executeInsert` / `executeUpdate` /
// `executeDelete`, `supabase.from(t).insert(rows)`); ids come back as numbers as
// PostgREST returns them.
async function executeInsert(table, value) {
  const { rows } = await db.query(`insert into public.${table} (value) values ($1) returning id`, [
    value ?? crypto.randomUUID(),
  ])
  return Number(rows[0].id)
}
async function executeUpdate(table, id) {
  await db.query(`update public.${table} set value = $1 where id = $2`, [crypto.randomUUID(), id])
}
async function executeDelete(table, id) {
  await db.query(`delete from public.${table} where id = $1`, [id])
}
/** `supabase.from('pg_changes').insert(rows)`: one statement, columns absent stay default. */
async function insertPgChanges(rows) {
  const cols = ['value', 'details', 'nullable_value']
  const params = []
  const tuples = rows.map((r) => {
    const cells = cols.map((c) => {
      if (!(c in r)) return 'default'
      params.push(r[c])
      return `$${params.length}`
    })
    return `(${cells.join(', ')})`
  })
  await db.query(`insert into public.pg_changes (${cols.join(', ')}) values ${tuples.join(', ')}`, params)
}

/** A postgres_changes INSERT listener on pg_changes whose payloads land in an Inbox. */
function onInsert(channel, filter, extra = {}) {
  const inbox = new Inbox(`pg_changes INSERT ${filter}`)
  channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'pg_changes', filter, ...extra }, (p) =>
    inbox.push(p)
  )
  return inbox
}

// ---------------------------------------------------------------- broadcast extension

scenario('broadcast extension / user is able to receive self broadcast', async (s) => {
  const supabase = s.supabase('A')
  const event = crypto.randomUUID()
  const expectedPayload = { message: crypto.randomUUID() }
  const channel = supabase.channel(randomTopic(), BROADCAST_CONFIG)
  const got = collect(channel, 'broadcast', { event })
  await subscribe(channel)
  await channel.send({ type: 'broadcast', event, payload: expectedPayload })
  const { payload: result } = await got.next(() => true, 'broadcast event')
  assert.deepStrictEqual(result, expectedPayload)
})

scenario('broadcast extension / user is able to use the endpoint to broadcast', async (s) => {
  const supabase = s.supabase('A')
  const event = crypto.randomUUID()
  const topic = randomTopic()
  const expectedPayload = { message: crypto.randomUUID() }
  const channel = supabase.channel(topic, BROADCAST_CONFIG)
  const got = collect(channel, 'broadcast', { event })
  await subscribe(channel)
  await sleep(100) // the e2e's settle window before the HTTP broadcast
  const res = await fetch(`${PROJECT_URL}/realtime/v1/api/broadcast`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${ANON_KEY}`, apikey: ANON_KEY },
    body: JSON.stringify({ messages: [{ topic, event, payload: expectedPayload }] }),
  })
  if (!res.ok) throw new Error(`Broadcast API returned ${res.status}`)
  const { payload: result } = await got.next(() => true, 'broadcast event')
  assert.deepStrictEqual(result, expectedPayload)
})

// ----------------------------------------------------------------- presence extension

for (const [name, isPrivate] of [
  ['user is able to receive presence updates', false],
  ['user is able to receive presence updates on private channels', true],
]) {
  scenario(`presence extension / ${name}`, async (s) => {
    const supabase = await signedIn(s)
    const message = crypto.randomUUID()
    const key = crypto.randomUUID()
    const channel = supabase.channel(randomTopic(), {
      config: { ...(isPrivate ? { private: true } : {}), broadcast: { self: true }, presence: { key } },
    })
    const joins = collect(channel, 'presence', { event: 'join' })
    await subscribe(channel)
    if ((await channel.track({ message })) === 'timed out') throw new Error('track() timed out')
    const joinEvent = await joins.next(() => true, 'presence join')
    assert.strictEqual(joinEvent.key, key)
    assert.strictEqual(joinEvent.newPresences[0].message, message)
  })
}

// ---------------------------------------------------------------- authorization check

scenario('authorization check / user using private channel cannot connect without permissions', async (s) => {
  const supabase = await signedIn(s)
  const channel = supabase.channel('restricted:' + crypto.randomUUID(), { config: { private: true } })
  const statuses = new Inbox('statuses')
  channel.subscribe((status, err) => statuses.push({ status, err: err?.message }))
  await statuses.next(() => true, 'channel rejection')
  const finalState = channel.state
  assert.notStrictEqual(finalState, 'joined', `Expected channel to be rejected but state is: ${finalState}`)
})

scenario('authorization check / user using private channel can connect with enough permissions', async (s) => {
  const supabase = await signedIn(s)
  await subscribe(supabase.channel(randomTopic(), { config: { private: true } }))
})

// ------------------------------------------------------------------ broadcast changes

scenario('broadcast changes / authenticated user receives INSERT broadcast change', async (s) => {
  const supabase = await signedIn(s)
  const testTopic = randomTopic()
  const id = crypto.randomUUID()
  const value = crypto.randomUUID()
  const channel = supabase.channel(testTopic, REPLICATION_READY_CONFIG)
  const got = collect(channel, 'broadcast', { event: 'INSERT' })
  await openReplicationChannel(channel)
  await db.query('insert into public.broadcast_changes (value, id, topic) values ($1, $2, $3)', [value, id, testTopic])
  const result = await got.next(() => true, 'INSERT event')
  assert.strictEqual(result.payload.record.id, id)
  assert.strictEqual(result.payload.record.value, value)
  assert.strictEqual(result.payload.old_record, null)
  assert.strictEqual(result.payload.operation, 'INSERT')
  assert.strictEqual(result.payload.schema, 'public')
  assert.strictEqual(result.payload.table, 'broadcast_changes')
})

scenario('broadcast changes / authenticated user receives UPDATE broadcast change', async (s) => {
  const supabase = await signedIn(s)
  const testTopic = randomTopic()
  const id = crypto.randomUUID()
  const originalValue = crypto.randomUUID()
  const updatedValue = crypto.randomUUID()
  const channel = supabase.channel(testTopic, REPLICATION_READY_CONFIG)
  const got = collect(channel, 'broadcast', { event: 'UPDATE' })
  await openReplicationChannel(channel)
  await db.query('insert into public.broadcast_changes (value, id, topic) values ($1, $2, $3)', [
    originalValue,
    id,
    testTopic,
  ])
  await db.query('update public.broadcast_changes set value = $1 where id = $2', [updatedValue, id])
  const result = await got.next(() => true, 'UPDATE event')
  assert.strictEqual(result.payload.record.id, id)
  assert.strictEqual(result.payload.record.value, updatedValue)
  assert.strictEqual(result.payload.old_record.id, id)
  assert.strictEqual(result.payload.old_record.value, originalValue)
  assert.strictEqual(result.payload.operation, 'UPDATE')
  assert.strictEqual(result.payload.schema, 'public')
  assert.strictEqual(result.payload.table, 'broadcast_changes')
})

scenario('broadcast changes / authenticated user receives DELETE broadcast change', async (s) => {
  const supabase = await signedIn(s)
  const testTopic = randomTopic()
  const id = crypto.randomUUID()
  const value = crypto.randomUUID()
  const channel = supabase.channel(testTopic, REPLICATION_READY_CONFIG)
  const got = collect(channel, 'broadcast', { event: 'DELETE' })
  await openReplicationChannel(channel)
  await db.query('insert into public.broadcast_changes (value, id, topic) values ($1, $2, $3)', [value, id, testTopic])
  await db.query('delete from public.broadcast_changes where id = $1', [id])
  const result = await got.next(() => true, 'DELETE event')
  assert.strictEqual(result.payload.record, null)
  assert.strictEqual(result.payload.old_record.id, id)
  assert.strictEqual(result.payload.old_record.value, value)
  assert.strictEqual(result.payload.operation, 'DELETE')
  assert.strictEqual(result.payload.schema, 'public')
  assert.strictEqual(result.payload.table, 'broadcast_changes')
})

// --------------------------------------------------------- postgres changes extension

scenario('postgres changes extension / user receives INSERT events with filter', async (s) => {
  const supabase = await signedIn(s)
  const uniqueValue = crypto.randomUUID()
  const channel = supabase.channel(randomTopic(), BROADCAST_CONFIG)
  const got = onInsert(channel, `value=eq.${uniqueValue}`)
  await openPostgresChannel(channel)
  await executeInsert('pg_changes', uniqueValue)
  await executeInsert('dummy')
  const result = await got.next(() => true, 'INSERT event')
  assert.strictEqual(result.eventType, 'INSERT')
  assert.strictEqual(result.new.value, uniqueValue)
})

scenario('postgres changes extension / user receives UPDATE events with filter', async (s) => {
  const supabase = await signedIn(s)
  const mainId = await executeInsert('pg_changes')
  const fakeId = await executeInsert('pg_changes')
  const dummyId = await executeInsert('dummy')
  const got = new Inbox('UPDATE')
  const channel = supabase
    .channel(randomTopic(), BROADCAST_CONFIG)
    .on('postgres_changes', { event: 'UPDATE', schema: 'public', table: 'pg_changes', filter: `id=eq.${mainId}` }, (p) =>
      got.push(p)
    )
  await openPostgresChannel(channel)
  await Promise.all([
    executeUpdate('pg_changes', mainId),
    executeUpdate('pg_changes', fakeId),
    executeUpdate('dummy', dummyId),
  ])
  const result = await got.next(() => true, 'UPDATE event')
  assert.strictEqual(result.eventType, 'UPDATE')
  assert.strictEqual(result.new.id, mainId)
})

scenario('postgres changes extension / user receives DELETE events with filter', async (s) => {
  const supabase = await signedIn(s)
  const mainId = await executeInsert('pg_changes')
  const fakeId = await executeInsert('pg_changes')
  const dummyId = await executeInsert('dummy')
  const got = new Inbox('DELETE')
  const channel = supabase
    .channel(randomTopic(), BROADCAST_CONFIG)
    .on('postgres_changes', { event: 'DELETE', schema: 'public', table: 'pg_changes', filter: `id=eq.${mainId}` }, (p) =>
      got.push(p)
    )
  await openPostgresChannel(channel)
  await Promise.all([
    executeDelete('pg_changes', mainId),
    executeDelete('pg_changes', fakeId),
    executeDelete('dummy', dummyId),
  ])
  const result = await got.next(() => true, 'DELETE event')
  assert.strictEqual(result.eventType, 'DELETE')
  assert.strictEqual(result.old.id, mainId)
})

scenario('postgres changes extension / user receives INSERT, UPDATE and DELETE concurrently', async (s) => {
  const supabase = await signedIn(s)
  const insertValue = crypto.randomUUID()
  const updateId = await executeInsert('pg_changes')
  const deleteId = await executeInsert('pg_changes')
  const [ins, upd, del] = [new Inbox('INSERT'), new Inbox('UPDATE'), new Inbox('DELETE')]
  const spec = (event, filter) => ({ event, schema: 'public', table: 'pg_changes', filter })
  const channel = supabase
    .channel(randomTopic(), BROADCAST_CONFIG)
    .on('postgres_changes', spec('INSERT', `value=eq.${insertValue}`), (p) => ins.push(p))
    .on('postgres_changes', spec('UPDATE', `id=eq.${updateId}`), (p) => upd.push(p))
    .on('postgres_changes', spec('DELETE', `id=eq.${deleteId}`), (p) => del.push(p))
  await openPostgresChannel(channel)
  await Promise.all([
    executeInsert('pg_changes', insertValue),
    executeUpdate('pg_changes', updateId),
    executeDelete('pg_changes', deleteId),
  ])
  const [insertResult, updateResult, deleteResult] = await Promise.all([
    ins.next(() => true, 'INSERT event'),
    upd.next(() => true, 'UPDATE event'),
    del.next(() => true, 'DELETE event'),
  ])
  assert.strictEqual(insertResult.eventType, 'INSERT')
  assert.strictEqual(updateResult.eventType, 'UPDATE')
  assert.strictEqual(deleteResult.eventType, 'DELETE')
})

scenario('postgres changes extension / select — omitting select returns full payload (backward compatible)', async (s) => {
  const supabase = await signedIn(s)
  const uniqueValue = crypto.randomUUID()
  const details = crypto.randomUUID()
  const channel = supabase.channel(randomTopic(), BROADCAST_CONFIG)
  const got = onInsert(channel, `value=eq.${uniqueValue}`)
  await openPostgresChannel(channel)
  await insertPgChanges([{ value: uniqueValue, details }])
  const result = await got.next(() => true, 'INSERT event')
  assert.strictEqual(result.eventType, 'INSERT')
  assert.ok(result.new.id !== undefined, 'id must be present')
  assert.strictEqual(result.new.value, uniqueValue, 'value must be present when no select is used')
  assert.strictEqual(result.new.details, details, 'details must be present when no select is used')
})

// ------------------------------------------- load-postgres-changes: the system message

scenario('load-postgres-changes / postgres changes system message latency', async (s) => {
  const supabase = await signedIn(s)
  const channel = supabase
    .channel(randomTopic(), BROADCAST_CONFIG)
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'pg_changes' }, () => {})
  await openPostgresChannel(channel)
})

// ---------------------------------------------------------- postgres-changes-filters

/** One operator: a single-condition filter must deliver the row `value` inserted alone. */
for (const [name, build] of [
  ['eq: delivers row equal to the value', (t) => [`eq_${t}`, postgresChangesFilter().eq('value', `eq_${t}`)]],
  ['neq: delivers row not equal to the value', (t) => [`neq_${t}`, postgresChangesFilter().neq('value', `no_${t}`)]],
  ['lt: delivers row less than the value', (t) => [`a_${t}`, postgresChangesFilter().lt('value', `b_${t}`)]],
  ['lte: delivers row less than or equal to the value', (t) => [`a_${t}`, postgresChangesFilter().lte('value', `b_${t}`)]],
  ['gt: delivers row greater than the value', (t) => [`c_${t}`, postgresChangesFilter().gt('value', `b_${t}`)]],
  ['gte: delivers row greater than or equal to the value', (t) => [`c_${t}`, postgresChangesFilter().gte('value', `b_${t}`)]],
  [
    'in: delivers row whose value is in the list',
    (t) => [`in_${t}`, postgresChangesFilter().in('value', [`in_${t}`, `other_${t}`])],
  ],
  ['like: delivers row matching the pattern', (t) => [`${t}hello`, postgresChangesFilter().like('value', `${t}%`)]],
  // upper-cased value, lower-cased filter
  ['ilike: matches the pattern case-insensitively', (t) => [`${t}HELLO`, postgresChangesFilter().ilike('value', `${t}hello%`)]],
  ['match: delivers row matching the regex', (t) => [`${t}abc123`, postgresChangesFilter().match('value', `^${t}`)]],
  // upper-cased value, lower-cased regex
  ['imatch: matches the regex case-insensitively', (t) => [`${t}ABC`, postgresChangesFilter().imatch('value', `^${t}abc`)]],
  [
    'isdistinct: delivers row whose value is distinct from the literal',
    (t) => [`isd_${t}`, postgresChangesFilter().isDistinct('value', `other_${t}`)],
  ],
]) {
  scenario(`postgres-changes-filters / ${name}`, async (s) => {
    const supabase = await signedIn(s)
    const [value, filter] = build(tagOf())
    const channel = supabase.channel(randomTopic(), BROADCAST_CONFIG)
    const got = onInsert(channel, filter)
    await openPostgresChannel(channel)
    await executeInsert('pg_changes', value)
    const result = await got.next((p) => p.new.value === value, `${name.split(':')[0]} event`)
    assert.strictEqual(result.new.value, value)
  })
}

scenario('postgres-changes-filters / is: delivers row whose nullable column is null', async (s) => {
  const supabase = await signedIn(s)
  const value = `is_${tagOf()}` // executeInsert only sets `value`, so nullable_value stays null
  const channel = supabase.channel(randomTopic(), BROADCAST_CONFIG)
  const got = onInsert(channel, postgresChangesFilter().is('nullable_value', null))
  await openPostgresChannel(channel)
  await executeInsert('pg_changes', value)
  const result = await got.next((p) => p.new.value === value, 'is event')
  assert.strictEqual(result.new.nullable_value, null)
})

/**
 * A composed filter: inserts `rows` (one statement, or one per row with `separately`),
 * waits for `awaited(seen)`, gives decoys the e2e's 1 s, and returns what was seen; `keep`
 * picks which payloads are recorded (the e2e's `if (...) seen.push(...)`).
 */
async function composed(s, filter, rows, { keep = () => true, record = (p) => p.new.value, awaited, separately = false }) {
  const supabase = await signedIn(s)
  const seen = []
  const arrived = new Inbox('seen')
  const channel = supabase.channel(randomTopic(), BROADCAST_CONFIG)
  channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'pg_changes', filter }, (p) => {
    if (keep(p)) {
      seen.push(record(p))
      arrived.push(p)
    }
  })
  await openPostgresChannel(channel)
  if (separately) for (const r of rows) await executeInsert('pg_changes', r.value)
  else await insertPgChanges(rows)
  await arrived.next(() => awaited(seen), 'the matching row')
  await sleep(1000) // the e2e's window for rows that must be excluded to arrive
  return seen
}

scenario('postgres-changes-filters / and: delivers only rows matching every comma-separated condition', async (s) => {
  const tag = tagOf()
  const match = `${tag}both`
  const decoy = `${tag}one`
  // value LIKE tag%  AND  details = tag-keep
  const filter = postgresChangesFilter().like('value', `${tag}%`).eq('details', `${tag}keep`)
  const seen = await composed(
    s,
    filter,
    [
      { value: match, details: `${tag}keep` }, // satisfies both conditions
      { value: decoy, details: `${tag}nope` }, // satisfies only the value condition
    ],
    { awaited: (seen) => seen.includes(match) }
  )
  assert.ok(seen.includes(match), 'row matching both conditions must be delivered')
  assert.ok(!seen.includes(decoy), 'row matching only one condition must be excluded')
})

scenario('postgres-changes-filters / not: excludes the negated value and delivers the rest', async (s) => {
  const tag = tagOf()
  const excluded = `${tag}skip`
  const delivered = `${tag}keep`
  const seen = await composed(s, postgresChangesFilter().not('value', 'eq', excluded), [{ value: excluded }, { value: delivered }], {
    separately: true,
    keep: (p) => p.new.value === excluded || p.new.value === delivered,
    awaited: (seen) => seen.includes(delivered),
  })
  assert.ok(seen.includes(delivered), 'non-matching row must be delivered')
  assert.ok(!seen.includes(excluded), 'negated value must be excluded')
})

scenario('postgres-changes-filters / compose: combines and, not and a pattern filter', async (s) => {
  const tag = tagOf()
  const match = `${tag}ok`
  const decoy = `${tag}ok2`
  // value LIKE tag%  AND  details NOT LIKE skip%  AND  nullable_value IS NULL
  const filter = postgresChangesFilter().like('value', `${tag}%`).not('details', 'like', 'skip%').is('nullable_value', null)
  const seen = await composed(
    s,
    filter,
    [
      { value: match, details: 'keep' }, // matches all three (nullable_value defaults to null)
      { value: decoy, details: 'skipme' }, // fails details NOT LIKE skip%
    ],
    { awaited: (seen) => seen.includes(match) }
  )
  assert.ok(seen.includes(match), 'row matching all three conditions must be delivered')
  assert.ok(!seen.includes(decoy), 'row failing the not.like condition must be excluded')
})

scenario('postgres-changes-filters / compose: bounded range with gte and lte on the same column', async (s) => {
  const tag = tagOf()
  const match = `${tag}_c` // inside [b, d]
  const tooLow = `${tag}_a` // below the lower bound
  const tooHigh = `${tag}_e` // above the upper bound
  // value >= tag_b  AND  value <= tag_d
  const filter = postgresChangesFilter().gte('value', `${tag}_b`).lte('value', `${tag}_d`)
  const seen = await composed(s, filter, [{ value: match }, { value: tooLow }, { value: tooHigh }], {
    keep: (p) => p.new.value.startsWith(tag),
    awaited: (seen) => seen.includes(match),
  })
  assert.ok(seen.includes(match), 'in-range row must be delivered')
  assert.ok(!seen.includes(tooLow), 'row below the lower bound must be excluded')
  assert.ok(!seen.includes(tooHigh), 'row above the upper bound must be excluded')
})

scenario('postgres-changes-filters / compose: combines in list with a like pattern across columns', async (s) => {
  const tag = tagOf()
  const match = `in_${tag}`
  const decoy = `in_${tag}` // same value, but details fail the like condition
  // value IN (in_tag, other_tag)  AND  details LIKE keep%
  const filter = postgresChangesFilter().in('value', [match, `other_${tag}`]).like('details', 'keep%')
  const seen = await composed(
    s,
    filter,
    [
      { value: match, details: `keep_${tag}` }, // satisfies both conditions
      { value: decoy, details: `drop_${tag}` }, // in the list but details fail the like
    ],
    { keep: (p) => p.new.value === match, record: (p) => p.new.details, awaited: (seen) => seen.includes(`keep_${tag}`) }
  )
  assert.ok(seen.includes(`keep_${tag}`), 'row matching both the in list and the like pattern must be delivered')
  assert.ok(!seen.includes(`drop_${tag}`), 'row failing the like pattern must be excluded')
})

scenario('postgres-changes-filters / compose: combines neq with not.like', async (s) => {
  const tag = tagOf()
  const match = `${tag}keep`
  const decoyEq = `${tag}exact` // fails the neq
  const decoyLike = `${tag}skipme` // fails the not.like
  // value != tag-exact  AND  value NOT LIKE tag-skip%
  const filter = postgresChangesFilter().neq('value', `${tag}exact`).not('value', 'like', `${tag}skip%`)
  const seen = await composed(s, filter, [{ value: match }, { value: decoyEq }, { value: decoyLike }], {
    keep: (p) => p.new.value.startsWith(tag),
    awaited: (seen) => seen.includes(match),
  })
  assert.ok(seen.includes(match), 'row satisfying both negations must be delivered')
  assert.ok(!seen.includes(decoyEq), 'row equal to the excluded value must be excluded')
  assert.ok(!seen.includes(decoyLike), 'row matching the excluded pattern must be excluded')
})

scenario('postgres-changes-filters / compose: combines is.not.null with an ilike pattern', async (s) => {
  const tag = tagOf()
  const match = `${tag}HELLO`
  const decoyNull = `${tag}HELLO2` // fails is.not.null (nullable_value stays null)
  const decoyLike = `${tag}WORLD` // fails the ilike pattern
  // nullable_value IS NOT NULL  AND  value ILIKE tag-hello%
  const filter = postgresChangesFilter().not('nullable_value', 'is', null).ilike('value', `${tag}hello%`)
  const seen = await composed(
    s,
    filter,
    [
      { value: match, nullable_value: `set_${tag}` }, // satisfies both conditions
      { value: decoyNull }, // nullable_value is null
      { value: decoyLike, nullable_value: `set_${tag}` }, // fails the ilike
    ],
    { keep: (p) => p.new.value.startsWith(tag), awaited: (seen) => seen.includes(match) }
  )
  assert.ok(seen.includes(match), 'row with a non-null column matching the pattern must be delivered')
  assert.ok(!seen.includes(decoyNull), 'row with a null column must be excluded')
  assert.ok(!seen.includes(decoyLike), 'row failing the ilike pattern must be excluded')
})

scenario('postgres-changes-filters / compose: four conditions across three columns', async (s) => {
  const tag = tagOf()
  const match = `${tag}match`
  const decoyValue = `${tag}other` // fails value=eq
  const decoyDetails = `${tag}match` // details fail the not.like
  const decoyNull = `${tag}match` // nullable_value is null
  // value = tag-match  AND  details NOT LIKE skip%  AND  details LIKE keep%  AND  nullable_value IS NOT NULL
  const filter = postgresChangesFilter()
    .eq('value', match)
    .not('details', 'like', 'skip%')
    .like('details', 'keep%')
    .not('nullable_value', 'is', null)
  const seen = await composed(
    s,
    filter,
    [
      { value: match, details: 'keep_a', nullable_value: `set_${tag}` }, // satisfies all four
      { value: decoyValue, details: 'keep_b', nullable_value: `set_${tag}` }, // wrong value
      { value: decoyDetails, details: 'skip_c', nullable_value: `set_${tag}` }, // details start with skip
      { value: decoyNull, details: 'keep_d' }, // nullable_value is null
    ],
    {
      keep: (p) => p.new.value.startsWith(tag),
      record: (p) => ({ value: p.new.value, details: p.new.details }),
      awaited: (seen) => seen.some((r) => r.details === 'keep_a'),
    }
  )
  assert.strictEqual(seen.length, 1, 'exactly one row must satisfy all four conditions')
  assert.strictEqual(seen[0].details, 'keep_a')
})

scenario('postgres-changes-filters / select: restricts the payload to the chosen columns', async (s) => {
  const supabase = await signedIn(s)
  const tag = tagOf()
  const value = `select_${tag}`
  // Ask for only id + value; details and nullable_value must be absent from the payload.
  const channel = supabase.channel(randomTopic(), BROADCAST_CONFIG)
  const got = onInsert(channel, postgresChangesFilter().eq('value', value), { select: ['id', 'value'] })
  await openPostgresChannel(channel)
  await insertPgChanges([{ value, details: `${tag}details`, nullable_value: `${tag}nv` }])
  const result = await got.next((p) => p.new.value === value, 'select event')
  assert.strictEqual(result.new.value, value)
  assert.deepStrictEqual(Object.keys(result.new).sort(), ['id', 'value'], 'payload must only contain the selected columns')
  assert.ok(!('details' in result.new), 'unselected details column must be absent')
  assert.ok(!('nullable_value' in result.new), 'unselected nullable_value column must be absent')
})

// ------------------------------------------------------------------- broadcast replay

const replayConfig = (since, limit) => ({ config: { private: true, broadcast: { replay: { since, limit } } } })

scenario('broadcast replay / replayed messages are delivered on join', async (s) => {
  const supabase = await signedIn(s)
  const event = crypto.randomUUID()
  const topic = randomTopic()
  const payload = { message: crypto.randomUUID() }
  const since = Date.now() - 1000
  await db.query('insert into public.replay_check (id, topic, event, payload) values ($1, $2, $3, $4)', [
    crypto.randomUUID(),
    topic,
    event,
    payload,
  ])
  await sleep(500) // as the e2e
  const receiver = supabase.channel(topic, replayConfig(since, 1))
  const got = collect(receiver, 'broadcast', { event })
  await subscribe(receiver)
  const { payload: result } = await got.next(() => true, 'replayed broadcast event')
  assert.strictEqual(result.message, payload.message)
})

scenario('broadcast replay / replayed binary messages are delivered on join', async (s) => {
  const supabase = await signedIn(s)
  const event = crypto.randomUUID()
  const topic = randomTopic()
  const binary = new Uint8Array([0xde, 0xad, 0xbe, 0xef, 0x00, 0xff])
  const since = Date.now() - 1000
  await db.query('insert into public.replay_check (id, topic, event, binary_payload) values ($1, $2, $3, $4::bytea)', [
    crypto.randomUUID(),
    topic,
    event,
    Buffer.from(binary),
  ])
  await sleep(500) // as the e2e
  const receiver = supabase.channel(topic, replayConfig(since, 1))
  const got = collect(receiver, 'broadcast', { event })
  await subscribe(receiver)
  const msg = await got.next(() => true, 'replayed binary broadcast event')
  const result = msg.payload
  const receivedMeta = msg.meta
  const received = result instanceof Uint8Array ? result : new Uint8Array(result)
  assert.strictEqual(received.length, binary.length, 'binary payload length mismatch')
  assert.ok(binary.every((b, i) => received[i] === b), 'binary payload bytes mismatch')
  assert.strictEqual(receivedMeta?.replayed, true, 'expected meta.replayed on replayed binary message')
})

scenario('broadcast replay / replayed messages carry meta.replayed flag', async (s) => {
  const supabase = await signedIn(s)
  const event = crypto.randomUUID()
  const topic = randomTopic()
  const since = Date.now() - 1000
  await db.query('insert into public.replay_check (id, topic, event, payload) values ($1, $2, $3, $4)', [
    crypto.randomUUID(),
    topic,
    event,
    { value: 1 },
  ])
  await sleep(500) // as the e2e
  const receiver = supabase.channel(topic, replayConfig(since, 1))
  const got = collect(receiver, 'broadcast', { event })
  await subscribe(receiver)
  const { meta: receivedMeta } = await got.next((m) => m.meta, 'replayed broadcast meta')
  assert.strictEqual(receivedMeta?.replayed, true)
})

scenario('broadcast replay / messages before since are not replayed', async (s) => {
  const supabase = await signedIn(s)
  const event = crypto.randomUUID()
  const topic = randomTopic()
  await db.query('insert into public.replay_check (id, topic, event, payload) values ($1, $2, $3, $4)', [
    crypto.randomUUID(),
    topic,
    event,
    { value: 'old' },
  ])
  // As the e2e: the insert's timestamp must be clearly before `since`.
  await sleep(1000)
  const since = Date.now()
  let result = null
  const receiver = supabase
    .channel(topic, replayConfig(since, 25))
    .on('broadcast', { event }, (msg) => (result = msg.payload))
  await subscribe(receiver)
  await sleep(500)
  assert.strictEqual(result, null)
})

// ------------------------------------------------------------------- broadcast binary

scenario('broadcast binary / send_binary delivers a binary broadcast', async (s) => {
  const supabase = await signedIn(s)
  const event = crypto.randomUUID()
  const topic = randomTopic()
  const binary = new Uint8Array([0xde, 0xad, 0xbe, 0xef, 0x00, 0xff])
  const channel = supabase.channel(topic, REPLICATION_READY_CONFIG)
  const got = collect(channel, 'broadcast', { event })
  await openReplicationChannel(channel)
  await db.query('select realtime.send_binary($1::bytea, $2::text, $3::text, true)', [Buffer.from(binary), event, topic])
  const { payload: result } = await got.next(() => true, 'binary broadcast event')
  const received = result instanceof Uint8Array ? result : new Uint8Array(result)
  assert.strictEqual(received.length, binary.length, 'binary payload length mismatch')
  assert.ok(binary.every((b, i) => received[i] === b), 'binary payload bytes mismatch')
})
