// Probe (not a test): do many waiting change-feed long-polls slow everyone's deliveries?
// WAITERS long-polls (`wait=30`, anon token) wait on `public.other`, which nobody writes,
// while one writer inserts a row of `public.notes2` every 20 ms for SECONDS seconds and a
// subscriber whose RLS policy Postgres must judge receives them. Prints the delivery
// latency (receipt minus commit_timestamp) and the rows written.
//
// HUB=127.0.0.1:4000 JWT_SECRET=<the hub's secret> DATABASE_URL=postgres://... \
//   WAITERS=300 SECONDS=10 node scripts/probe_feed_waiters.mjs
// With `switchboard dev`: JWT_SECRET=$(cat .switchboard/jwt_secret). The database needs:
//   create table public.notes2 (id bigserial primary key, owner uuid not null, body text);
//   grant select on public.notes2 to authenticated;
//   alter table public.notes2 enable row level security;
//   create policy own on public.notes2 for select to authenticated
//     using (owner = auth.uid() and (select true));
//   create table public.other (id bigserial primary key, v int);
//   grant select on public.other to anon;
//   select realtime.enable('public.notes2'); select realtime.enable('public.other');
import crypto from 'node:crypto'
import WebSocket from 'ws'
import pg from 'pg'

const HUB = process.env.HUB ?? '127.0.0.1:4000'
const SECRET = process.env.JWT_SECRET
const WAITERS = Number(process.env.WAITERS ?? 300)
const SECONDS = Number(process.env.SECONDS ?? 10)
const OWNER = 'aaaaaaaa-0000-4000-8000-000000000001'

function mint (claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url')
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ ...claims, exp: Math.floor(Date.now() / 1000) + 3600 })}`
  return `${head}.${crypto.createHmac('sha256', SECRET).update(head).digest('base64url')}`
}

const anon = mint({ role: 'anon' })
let stop = false

async function waiter () {
  let cursor = ''
  while (!stop) {
    try {
      const url = `http://${HUB}/realtime/v1/api/changes?tables=public.other&wait=30${cursor && `&cursor=${cursor}`}`
      const body = await (await fetch(url, { headers: { authorization: `Bearer ${anon}` } })).json()
      cursor = body.next_cursor ?? cursor
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
}

const latencies = []
const ws = new WebSocket(`ws://${HUB}/realtime/v1/websocket?apikey=${mint({ role: 'authenticated', sub: OWNER })}&vsn=1.0.0`)
ws.on('message', (data) => {
  const msg = JSON.parse(data)
  if (msg.event === 'postgres_changes') latencies.push(Date.now() - Date.parse(msg.payload.data.commit_timestamp))
})
await new Promise((resolve) => ws.on('open', resolve))
ws.send(JSON.stringify({
  topic: 'realtime:probe', event: 'phx_join', ref: '1', join_ref: '1',
  payload: { config: { postgres_changes: [{ event: 'INSERT', schema: 'public', table: 'notes2' }] } },
}))
await new Promise((resolve) => setTimeout(resolve, 1000))
for (let i = 0; i < WAITERS; i++) waiter()
await new Promise((resolve) => setTimeout(resolve, 2000))

const db = new pg.Client({ connectionString: process.env.DATABASE_URL })
await db.connect()
const end = Date.now() + SECONDS * 1000
let written = 0
while (Date.now() < end) {
  await db.query('insert into public.notes2 (owner, body) values ($1, $2)', [OWNER, 'x'])
  written++
  await new Promise((resolve) => setTimeout(resolve, 20))
}
await new Promise((resolve) => setTimeout(resolve, 3000))
stop = true
latencies.sort((a, b) => a - b)
const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))]
console.log(JSON.stringify({ waiters: WAITERS, written, delivered: latencies.length, p50_ms: q(0.5), p99_ms: q(0.99), max_ms: latencies.at(-1) }))
process.exit(0)
