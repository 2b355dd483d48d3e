// The inspector page in a real browser: headless Chromium from the system (Debian's
// `chromium` package; nothing is downloaded) driven by playwright-core. Run by
// tests/inspector_browser.rs against a hub with the client fixture database.
//
// It checks that the page asks for a token and refuses a bad one; that a service_role
// token shows the enabled tables; that the lag chart keeps updating; that a row committed
// here appears in the "try it" panel for a user allowed to see it and not for a user whose
// policies hide it; that a join refused as "not enabled" is listed with copyable SQL; that
// the broadcast and presence tester works; that try it says why the hub refuses a pasted
// token, keeps a schema with a dot in its name whole and keeps the chosen table when it
// leaves the enabled list; that the page fits a phone (a 63-character table name
// included) in both themes;
// that a page on another origin may call the REST broadcast and the change feed but not
// the admin API (CORS); and that the browser reports no errors (CSP violations included).

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import WebSocket from 'ws'
import { chromium } from 'playwright-core'
import { HUB, DATABASE_URL, CHROMIUM, ADA, BO, WAIT, mint } from './env.mjs'

const SCREENSHOT = process.env.INSPECTOR_SCREENSHOT || ''

let context
let page
let db
let userDataDir
const browserErrors = []
let nextId = Math.floor(Date.now() / 1000) * 1000

async function insertTodo(owner, title) {
  nextId += 1
  await db.query('insert into public.todos (id, owner, title) values ($1, $2, $3)', [nextId, owner, title])
}

const tag = () => crypto.randomUUID().slice(0, 8)

before(async () => {
  db = new pg.Client({ connectionString: DATABASE_URL })
  await db.connect()
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'inspector-chromium-'))
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1280, height: 900 },
    colorScheme: 'light',
  })
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: HUB })
  page = context.pages()[0] ?? (await context.newPage())
  page.setDefaultTimeout(WAIT)
  page.on('console', (msg) => {
    if (msg.type() === 'error') browserErrors.push(msg.text())
  })
  page.on('pageerror', (err) => browserErrors.push(`page error: ${err.message}`))
})

after(async () => {
  await context?.close()
  await db?.end()
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true })
})

test('the page asks for a token, shows no data without one, and refuses a bad one', async () => {
  await page.goto(`${HUB}/inspector`)
  await page.locator('#sign-in').waitFor({ state: 'visible' })
  assert.equal(await page.locator('#dashboard').isVisible(), false)
  const status = await page.evaluate(async () => (await fetch('/inspector/api/snapshot')).status)
  assert.equal(status, 401, 'the data endpoint refuses an anonymous page')

  await page.fill('#credential', mint({ role: 'anon' }))
  await page.click('#sign-in-button')
  await page.locator('#sign-in-error').waitFor({ state: 'visible' })
  assert.match(await page.textContent('#sign-in-error'), /needs a service_role token/)

  await page.fill('#credential', 'certainly-not-the-admin-secret')
  await page.click('#sign-in-button')
  await page.waitForFunction(() => document.querySelector('#sign-in-error').textContent.includes('admin secret'))
  assert.equal(await page.locator('#dashboard').isVisible(), false)
})

test('a service_role token shows the enabled tables', async () => {
  await page.fill('#credential', mint({ role: 'service_role' }))
  await page.click('#sign-in-button')
  await page.locator('#dashboard').waitFor({ state: 'visible' })
  await page.locator('#tables-enabled tr[data-table="public.todos"]').waitFor()
  await page.locator('#tables-enabled tr[data-table="public.notes"]').waitFor()
  await page.waitForFunction(() => document.querySelector('#live').dataset.state === 'ok')
  assert.equal(await page.locator('#sign-in').isVisible(), false)
})

test('the lag chart updates every second', async () => {
  const chart = page.locator('#lag-chart')
  await page.waitForFunction(() => Number(document.querySelector('#lag-chart').dataset.samples) >= 2)
  const before = Number(await chart.getAttribute('data-last-seq'))
  await page.waitForFunction(
    (seq) => Number(document.querySelector('#lag-chart').dataset.lastSeq) >= seq + 2,
    before,
    { timeout: 5000 }
  )
  const lag = await page.textContent('#capture-lag')
  assert.match(lag, /ms|s|–/)
  assert.equal(await page.getAttribute('#capture-state', 'data-state'), 'ok')
})

async function subscribeTodos() {
  await page.selectOption('#try-table', 'public.todos')
  await page.selectOption('#try-event', '*')
  await page.fill('#try-filter', '')
  await page.click('#try-clear')
  await page.click('#try-start')
  await page.waitForFunction(() => document.querySelector('#try-status').dataset.state === 'subscribed')
}

test('try it: a row reaches the user allowed to see it, and not the one whose policies hide it', async () => {
  // Ada, with a token the hub mints for a role and claims.
  await page.check('input[name="who"][value="mint"]')
  await page.selectOption('#try-role', 'authenticated')
  await page.fill('#try-claims', JSON.stringify({ sub: ADA }))
  await subscribeTodos()
  assert.match(await page.textContent('#try-status'), new RegExp(`sub ${ADA}`))
  const forBo = `bo-${tag()}`
  const forAda = `ada-${tag()}`
  await insertTodo(BO, forBo)
  await insertTodo(ADA, forAda)
  const adaRow = page.locator('#try-log li[data-kind="INSERT"]', { hasText: forAda })
  await adaRow.waitFor()
  assert.match(await adaRow.textContent(), /public\.todos/)
  // Bo's row committed first: had Ada been sent it, it would be here already.
  assert.equal(await page.locator('#try-log li', { hasText: forBo }).count(), 0, "Ada must not see Bo's todo")

  // Bo, with a pasted token: Ada's row is hidden from him.
  await page.check('input[name="who"][value="paste"]')
  await page.fill('#try-token', mint({ role: 'authenticated', sub: BO }))
  await subscribeTodos()
  const secret = `ada-secret-${tag()}`
  const own = `bo-own-${tag()}`
  await insertTodo(ADA, secret)
  await insertTodo(BO, own)
  await page.locator('#try-log li[data-kind="INSERT"]', { hasText: own }).waitFor()
  assert.equal(await page.locator('#try-log li', { hasText: secret }).count(), 0, "Bo must not see Ada's todo")
})

/** Joins postgres_changes on public.`table` as anon; resolves with the hub's refusal. */
async function refuseJoin(table) {
  const ws = new WebSocket(`${HUB.replace(/^http/, 'ws')}/realtime/v1/websocket?apikey=${mint({ role: 'anon' })}&vsn=1.0.0`)
  const refused = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no refusal within 10 s')), WAIT)
    ws.on('message', (data) => {
      const msg = JSON.parse(data.toString())
      if (msg.event === 'system' && msg.payload.status === 'error') {
        clearTimeout(timer)
        resolve(msg.payload.message)
      }
    })
  })
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject))
  ws.send(
    JSON.stringify({
      topic: `realtime:${table}`,
      event: 'phx_join',
      ref: '1',
      join_ref: '1',
      payload: { config: { postgres_changes: [{ event: '*', schema: 'public', table }] } },
    })
  )
  try {
    return await refused
  } finally {
    ws.close()
  }
}

test('try it says in the hub\'s words why it refuses a pasted token', async () => {
  await page.check('input[name="who"][value="paste"]')
  await page.fill('#try-token', mint({ role: 'authenticated', sub: ADA }, -60))
  await page.click('#try-start')
  await page.waitForFunction(() => document.querySelector('#try-status').dataset.state === 'error')
  assert.match(await page.textContent('#try-status'), /Token has expired \d+ seconds ago/)
})

test('try it keeps a dotted schema name whole, and the chosen table when it is no longer enabled', async () => {
  await db.query(`
    create schema if not exists "Odd.Schema";
    create table if not exists "Odd.Schema".t (id bigint primary key, body text);
    grant usage on schema "Odd.Schema" to authenticated, service_role;
    grant select on "Odd.Schema".t to authenticated, service_role;
    select realtime.enable('"Odd.Schema".t');`)
  await page.waitForFunction(() => [...document.querySelector('#try-table').options].some((o) => o.textContent === 'Odd.Schema.t'))
  await page.check('input[name="who"][value="mint"]')
  await page.selectOption('#try-role', 'service_role')
  await page.fill('#try-claims', '{}')
  await page.selectOption('#try-table', { label: 'Odd.Schema.t' })
  await page.click('#try-clear')
  await page.click('#try-start')
  await page.waitForFunction(() => document.querySelector('#try-status').dataset.state === 'subscribed')
  const body = `odd-${tag()}`
  await db.query('insert into "Odd.Schema".t (id, body) values ($1, $2)', [Date.now(), body])
  await page.locator('#try-log li[data-kind="INSERT"]', { hasText: body }).waitFor()

  // Disabled: the picker keeps the choice and says it is no longer listed.
  await db.query(`select realtime.disable('"Odd.Schema".t')`)
  await page.waitForFunction(
    () => !document.querySelector('#tables-enabled tr[data-table="Odd.Schema.t"]'),
    null,
    { timeout: WAIT }
  )
  await page.waitForFunction(() => {
    const chosen = document.querySelector('#try-table').selectedOptions[0]
    return chosen?.textContent === 'Odd.Schema.t (not in the enabled list now)'
  })
})

test('a join refused as not enabled is listed with SQL that copies in one click', async () => {
  await db.query(
    'create table if not exists public.inspector_drafts (id bigint primary key, body text); grant select on public.inspector_drafts to anon, authenticated'
  )
  assert.match(await refuseJoin('inspector_drafts'), /not enabled/)

  const sql = "select realtime.enable('public.inspector_drafts');"
  const item = page.locator('#not-enabled-list li[data-table="public.inspector_drafts"]')
  await item.waitFor()
  assert.equal(await item.locator('code.sql').textContent(), sql)
  await item.locator('button').click()
  await page.waitForFunction(() =>
    document.querySelector('#not-enabled-list li[data-table="public.inspector_drafts"] button').dataset.copied === 'yes'
  )
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), sql)
})

test('the broadcast and presence tester joins, tracks and receives its own broadcast', async () => {
  const topic = `inspector-${tag()}`
  await page.fill('#ps-topic', topic)
  await page.click('#ps-join')
  await page.waitForFunction(() => document.querySelector('#ps-status').dataset.state === 'joined')
  await page.click('#ps-track button[type="submit"]')
  await page.locator('#ps-present li[data-key]').waitFor()
  await page.fill('#ps-payload', '{"text":"hello from the inspector"}')
  await page.click('#ps-send button[type="submit"]')
  await page.locator('#ps-log li[data-kind="broadcast"]', { hasText: 'hello from the inspector' }).waitFor()
  // The connections card lists the topic with its channel and tracked presence.
  const row = page.locator(`#topics-body tr[data-topic="realtime:${topic}"]`)
  await row.waitFor()
  await page.waitForFunction(
    (t) => document.querySelector(`#topics-body tr[data-topic="realtime:${t}"] td:nth-child(3)`)?.textContent === '1',
    topic
  )
})

test('a screenshot with data (when asked for)', { skip: !SCREENSHOT && 'INSPECTOR_SCREENSHOT not set' }, async () => {
  // Some traffic so the chart and rates have something to show.
  let id = nextId + 100000
  for (let i = 0; i < 60; i++) {
    const n = 1 + Math.round(4 * (1 + Math.sin(i / 4)))
    for (let k = 0; k < n; k++) {
      id += 1
      await db.query('insert into public.notes (id, body) values ($1, $2)', [id, `note ${id}`])
    }
    await new Promise((r) => setTimeout(r, 200))
  }
  await page.waitForTimeout(1500)
  await page.evaluate(() => window.scrollTo(0, 0))
  await page.screenshot({ path: SCREENSHOT, fullPage: true })
})

test('the page fits a phone and follows the dark theme, and the toggle switches it', async () => {
  // The longest name Postgres allows, in the "asked for, not enabled" list.
  const long = 'a_really_long_table_name_that_someone_might_actually_use_in_pro'
  assert.equal(long.length, 63)
  await db.query(`create table if not exists public.${long} (id bigint primary key); grant select on public.${long} to anon`)
  assert.match(await refuseJoin(long), /not enabled/)
  await page.locator(`#not-enabled-list li[data-table="public.${long}"]`).waitFor()
  await page.setViewportSize({ width: 360, height: 780 })
  await page.emulateMedia({ colorScheme: 'dark' })
  await page.evaluate(() => {
    delete document.documentElement.dataset.theme
    localStorage.removeItem('switchboard-inspector-theme')
  })
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone`)
  const [brandEnd, pillStart] = await page.evaluate(() => [
    document.querySelector('.brand-name').getBoundingClientRect().right,
    document.querySelector('#live').getBoundingClientRect().left,
  ])
  assert.ok(brandEnd <= pillStart, `the brand (to ${brandEnd}px) runs under the live pill (from ${pillStart}px)`)
  const luminance = () =>
    page.evaluate(() => {
      const [r, g, b] = getComputedStyle(document.body).backgroundColor.match(/\d+/g).map(Number)
      return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255
    })
  assert.ok((await luminance()) < 0.2, 'dark background under prefers-color-scheme: dark')
  await page.click('#theme-toggle')
  assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'light')
  assert.ok((await luminance()) > 0.8, 'light background after the toggle')
  await page.click('#theme-toggle')
  assert.ok((await luminance()) < 0.2, 'dark again')
})

test('a page on another origin broadcasts over REST and reads the change feed; the admin API stays closed to it', async () => {
  const topic = `cors-${tag()}`
  const anon = mint({ role: 'anon' })
  const ws = new WebSocket(`${HUB.replace(/^http/, 'ws')}/realtime/v1/websocket?apikey=${anon}&vsn=1.0.0`)
  const frames = []
  ws.on('message', (data) => frames.push(JSON.parse(data.toString())))
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject))
  ws.send(JSON.stringify({ topic: `realtime:${topic}`, event: 'phx_join', ref: '1', join_ref: '1', payload: { config: {} } }))
  const deadline = Date.now() + WAIT
  const seen = async (pred, what) => {
    while (!frames.some(pred)) {
      if (Date.now() > deadline) throw new Error(`no ${what}: ${JSON.stringify(frames)}`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }
  await seen((f) => f.event === 'phx_reply' && f.ref === '1', 'join reply')

  // A page served from another port is another origin: every request below is
  // cross-origin, with a preflight for its Authorization, apikey and Content-Type headers.
  const site = http.createServer((_req, res) => res.end('<!doctype html><title>portal</title>'))
  await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve))
  const other = await context.newPage()
  try {
    await other.goto(`http://127.0.0.1:${site.address().port}/`)
    const answers = await other.evaluate(
      async ({ hub, topic, anon, service }) => {
        const call = async (path, init) => {
          try {
            const r = await fetch(hub + path, init)
            return { status: r.status, body: await r.text() }
          } catch (e) {
            return { refused: String(e) }
          }
        }
        const headers = (token) => ({ authorization: `Bearer ${token}`, apikey: anon, 'content-type': 'application/json' })
        return {
          broadcast: await call('/realtime/v1/api/broadcast', {
            method: 'POST',
            headers: headers(anon),
            body: JSON.stringify({ messages: [{ topic, event: 'from-browser', payload: { n: 1 } }] }),
          }),
          feed: await call('/realtime/v1/api/changes?tables=public.todos', { headers: headers(service) }),
          admin: await call('/api/status', { headers: headers(service) }),
        }
      },
      { hub: HUB, topic, anon, service: mint({ role: 'service_role' }) }
    )
    assert.equal(answers.broadcast.status, 202, JSON.stringify(answers))
    assert.equal(answers.feed.status, 200, JSON.stringify(answers))
    assert.equal(typeof JSON.parse(answers.feed.body).next_cursor, 'string')
    assert.match(answers.admin.refused ?? '', /fetch/i, JSON.stringify(answers))
  } finally {
    await other.close()
    site.close()
  }
  await seen((f) => f.event === 'broadcast' && f.payload.event === 'from-browser', 'broadcast from the browser')
  ws.close()
})

test('signing out returns to the form; the browser reported no errors', async () => {
  await page.click('#sign-out')
  await page.locator('#sign-in').waitFor({ state: 'visible' })
  const status = await page.evaluate(async () => (await fetch('/inspector/api/snapshot')).status)
  assert.equal(status, 401)
  // The refused sign-ins above answered 401, which Chromium logs as a failed load.
  const unexpected = browserErrors.filter((e) => !/status of 401/.test(e))
  assert.deepEqual(unexpected, [], 'console errors (CSP violations included)')
})
