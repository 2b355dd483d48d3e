// A customer portal in a real browser: headless Chromium from the system (Debian's
// `chromium` package; nothing is downloaded) driven by playwright-core loads supabase-js's
// own browser bundle (dist/umd/supabase.js from npm) from a page on another origin than
// the hub, as a portal is served, and talks to the hub through the browser's WebSocket
// and fetch. Run by tests/inspector_browser.rs against a hub with the client fixture
// database.
//
// It checks that a customer's page receives its own rows and never another customer's;
// that `channel.send()` before subscribing (supabase-js's REST path, across origins)
// reaches subscribers; that presence syncs between two pages; and that the browser
// reports no errors.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { createRequire } from 'node:module'
import pg from 'pg'
import WebSocket from 'ws'
import { chromium } from 'playwright-core'
import { HUB, DATABASE_URL, CHROMIUM, ADA, BO, WAIT, mint } from './env.mjs'

const ANON = mint({ role: 'anon' })
const tag = () => crypto.randomUUID().slice(0, 8)

// supabase-js's browser bundle, as a portal would load it.
const BUNDLE = fs.readFileSync(
  path.join(path.dirname(createRequire(import.meta.url).resolve('@supabase/supabase-js')), 'umd', 'supabase.js')
)

let browser
let site
let siteUrl
let db
let userDataDir
const browserErrors = []
let nextId = Math.floor(Date.now() / 1000) * 1000 + 500

before(async () => {
  db = new pg.Client({ connectionString: DATABASE_URL })
  await db.connect()
  // The portal's own origin: another port than the hub's.
  site = http.createServer((req, res) => {
    if (req.url === '/supabase.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' })
      return res.end(BUNDLE)
    }
    res.writeHead(200, { 'content-type': 'text/html' })
    res.end('<!doctype html><title>portal</title><script src="/supabase.js"></script>')
  })
  await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve))
  siteUrl = `http://127.0.0.1:${site.address().port}/`
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'portal-chromium-'))
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  })
})

after(async () => {
  await browser?.close()
  site?.close()
  await db?.end()
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true })
})

/** A portal page signed in as `sub`, with `window.sb` a supabase-js client for the hub. */
async function portal(sub) {
  const page = await browser.newPage()
  page.setDefaultTimeout(WAIT)
  page.on('console', (msg) => {
    if (msg.type() === 'error') browserErrors.push(`${sub}: ${msg.text()}`)
  })
  page.on('pageerror', (err) => browserErrors.push(`${sub}: page error: ${err.message}`))
  await page.goto(siteUrl)
  await page.evaluate(
    ({ project, anon, token }) => {
      window.sb = window.supabase.createClient(project, anon, {
        auth: { persistSession: false, autoRefreshToken: false },
      })
      window.sb.realtime.setAuth(token)
      window.got = []
    },
    { project: HUB, anon: ANON, token: mint({ role: 'authenticated', sub }) }
  )
  return page
}

async function insertTodo(owner, title) {
  nextId += 1
  await db.query('insert into public.todos (id, owner, title) values ($1, $2, $3)', [nextId, owner, title])
  return nextId
}

test('a customer page receives its own rows and never another customer’s', async () => {
  const page = await portal(ADA)
  await page.evaluate(
    (topic) =>
      new Promise((resolve, reject) => {
        window.sb
          .channel(topic)
          .on('postgres_changes', { event: '*', schema: 'public', table: 'todos' }, (p) => window.got.push(p))
          .subscribe((status, err) => {
            if (status === 'SUBSCRIBED') resolve()
            else if (status !== 'CLOSED') reject(new Error(`${status}: ${err?.message}`))
          })
      }),
    `portal-${tag()}`
  )
  const bos = await insertTodo(BO, 'not for Ada')
  const adas = await insertTodo(ADA, 'for Ada')
  await page.waitForFunction((id) => window.got.some((p) => p.new?.id === id), adas)
  const got = await page.evaluate(() => window.got.map((p) => ({ type: p.eventType, id: p.new?.id, owner: p.new?.owner })))
  assert.deepEqual(got, [{ type: 'INSERT', id: adas, owner: ADA }], `Bo's row ${bos} must not arrive`)
  await page.close()
})

test('channel.send before subscribing goes over REST across origins and reaches subscribers', async () => {
  const topic = `portal-rest-${tag()}`
  const ws = new WebSocket(`${HUB.replace(/^http/, 'ws')}/realtime/v1/websocket?apikey=${ANON}&vsn=1.0.0`)
  const frames = []
  ws.on('message', (data) => frames.push(JSON.parse(data.toString())))
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject))
  ws.send(JSON.stringify({ topic: `realtime:${topic}`, event: 'phx_join', ref: '1', join_ref: '1', payload: { config: {} } }))
  const seen = async (pred, what) => {
    const deadline = Date.now() + WAIT
    while (!frames.some(pred)) {
      if (Date.now() > deadline) throw new Error(`no ${what}: ${JSON.stringify(frames)}`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }
  await seen((f) => f.event === 'phx_reply' && f.ref === '1', 'join reply')

  const page = await portal(ADA)
  const result = await page.evaluate(
    (topic) => window.sb.channel(topic).send({ type: 'broadcast', event: 'invoice-paid', payload: { n: 7 } }),
    topic
  )
  assert.equal(result, 'ok')
  await seen((f) => f.event === 'broadcast' && f.payload.event === 'invoice-paid', 'the REST broadcast')
  const f = frames.find((f) => f.event === 'broadcast')
  assert.deepEqual(f.payload.payload, { n: 7 })
  ws.close()
  await page.close()
})

test('presence syncs between two customer pages', async () => {
  const topic = `portal-presence-${tag()}`
  const ada = await portal(ADA)
  const bo = await portal(BO)
  for (const [page, key] of [[ada, 'ada'], [bo, 'bo']]) {
    const tracked = await page.evaluate(
      ({ topic, key }) =>
        new Promise((resolve, reject) => {
          const ch = window.sb.channel(topic, { config: { presence: { key } } })
          ch.on('presence', { event: 'sync' }, () => {
            window.online = Object.keys(ch.presenceState()).sort()
          })
          const timer = setTimeout(() => reject(new Error('no SUBSCRIBED')), 8000)
          ch.subscribe(async (status) => {
            if (status !== 'SUBSCRIBED') return
            clearTimeout(timer)
            resolve(await ch.track({ typing: false }))
          })
        }),
      { topic, key }
    )
    assert.equal(tracked, 'ok')
  }
  for (const page of [ada, bo]) {
    await page.waitForFunction(() => JSON.stringify(window.online) === '["ada","bo"]')
  }
  await bo.close()
  await ada.waitForFunction(() => JSON.stringify(window.online) === '["ada"]')
  await ada.close()
})

test('the browser reported no errors', () => {
  assert.deepEqual(browserErrors, [])
})
