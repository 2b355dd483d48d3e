// Probe (not a test): does one subscriber's expensive filters delay another subscriber?
// Mirrors issue 15's probe 2: attacker connections hold the most postgres_changes entries
// a connection may (default 500), each `title=like.%aaa…ab` at the longest pattern
// allowed (256 characters); a row with a 40,000-character title is inserted, then a row
// of an unrelated table, whose delivery latency to a victim subscriber is measured.
// Prints median / p95 / max latency without attackers and with them, in one run.
//
// HUB_WS=ws://127.0.0.1:4100/realtime/v1/websocket APIKEY=<anon token> \
// DATABASE_URL=postgres://... ATTACKERS=20 SAMPLES=30 node scripts/probe_filter_cost.mjs
// The database needs: public.items (id bigserial, title text) and public.other
// (id bigserial), both granted to anon and enabled (select realtime.enable(...)).
import WebSocket from 'ws'
import pg from 'pg'

const HUB = process.env.HUB_WS
const APIKEY = process.env.APIKEY
const ATTACKERS = Number(process.env.ATTACKERS ?? 20)
const SAMPLES = Number(process.env.SAMPLES ?? 30)
const PER_JOIN = Number(process.env.PER_JOIN ?? 100)
const PER_CONN = Number(process.env.PER_CONN ?? 500)
const PATTERN = '%' + 'a'.repeat(254) + 'b'
// FILTER=eq compares the cost of as many cheap filters (`title=eq.x`).
const FILTER = process.env.FILTER === 'eq' ? 'title=eq.x' : `title=like.${PATTERN}`

let ref = 0
function connect () {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${HUB}?apikey=${APIKEY}&vsn=2.0.0`)
    ws.on('open', () => resolve(ws))
    ws.on('error', reject)
  })
}
function join (ws, topic, entries) {
  const r = String(++ref)
  return new Promise((resolve) => {
    const onMessage = (data) => {
      const m = JSON.parse(data)
      if (m[1] === r && m[3] === 'phx_reply') {
        ws.off('message', onMessage)
        resolve(m[4])
      }
    }
    ws.on('message', onMessage)
    ws.send(JSON.stringify([r, r, topic, 'phx_join', { config: { postgres_changes: entries } }]))
  })
}
function heartbeat (ws) {
  ws.send(JSON.stringify([null, String(++ref), 'phoenix', 'heartbeat', {}]))
}

const db = new pg.Client({ connectionString: process.env.DATABASE_URL })
await db.connect()
const victim = await connect()
// A change may arrive before the insert's own reply does: arrivals are kept by id.
const waiting = new Map()
const arrived = new Map()
victim.on('message', (data) => {
  const m = JSON.parse(data)
  if (m[3] !== 'postgres_changes') return
  const id = Number(m[4].data.record.id)
  const at = process.hrtime.bigint()
  const done = waiting.get(id)
  if (done) { waiting.delete(id); done(at) } else arrived.set(id, at)
})
const reply = await join(victim, 'realtime:victim', [{ event: 'INSERT', schema: 'public', table: 'other' }])
if (reply.status !== 'ok') throw new Error(JSON.stringify(reply))
await new Promise((resolve) => setTimeout(resolve, 500))

const bigTitle = 'a'.repeat(40000)
async function sample () {
  await db.query('insert into public.items (title) values ($1)', [bigTitle])
  const t0 = process.hrtime.bigint()
  const { rows } = await db.query('insert into public.other default values returning id')
  const id = Number(rows[0].id)
  const at = arrived.get(id) ?? await new Promise((resolve) => waiting.set(id, resolve))
  arrived.delete(id)
  return Number(at - t0) / 1e6
}
async function phase (name) {
  const ms = []
  for (let i = 0; i < SAMPLES; i++) {
    ms.push(await sample())
    heartbeat(victim)
  }
  ms.sort((a, b) => a - b)
  const at = (q) => ms[Math.min(ms.length - 1, Math.floor(q * ms.length))].toFixed(1)
  console.log(`${name}: median ${at(0.5)} ms, p95 ${at(0.95)} ms, max ${ms[ms.length - 1].toFixed(1)} ms (${SAMPLES} samples)`)
}

await phase('no attackers')
const attackers = []
let refused = 0
for (let a = 0; a < ATTACKERS; a++) {
  const ws = await connect()
  attackers.push(ws)
  const entry = { event: '*', schema: 'public', table: 'items', filter: FILTER }
  for (let ch = 0; ch * PER_JOIN < PER_CONN; ch++) {
    const r = await join(ws, `realtime:attack${ch}`, Array(PER_JOIN).fill(entry))
    if (r.status !== 'ok') refused++
  }
  // One join past the per-connection limit: refused.
  const over = await join(ws, 'realtime:over', [entry])
  if (over.status === 'ok') throw new Error('a join past the per-connection limit was accepted')
}
console.log(`${ATTACKERS} attackers × ${PER_CONN} entries of ${FILTER.slice(0, 20)}… (${refused} joins refused below the limit)`)
await new Promise((resolve) => setTimeout(resolve, 1000))
await phase(`${ATTACKERS * PER_CONN} attacking filters`)
for (const ws of attackers) ws.close()
victim.close()
await db.end()
