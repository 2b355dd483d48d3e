// Shared harness for the realtime-js / supabase-js conformance tests.
//
// Every test runs inside `scenario()`: it gets a Session that builds real clients whose
// WebSocket transport records every raw frame in both directions. When the test fails, the
// recorded frames are appended to the error, so a failure shows exactly what the hub sent.
// No fixed sleeps: tests await events through `Inbox.next()`, which fails with a clear
// message after a deadline.

import { test } from 'node:test'
import crypto from 'node:crypto'
import WebSocket from 'ws'
import { RealtimeClient } from '@supabase/realtime-js'
import { createClient } from '@supabase/supabase-js'

function requiredEnv(name) {
  const value = process.env[name]
  if (!value) throw new Error(`environment variable ${name} must be set`)
  return value
}

/** Realtime base URL, e.g. `http://127.0.0.1:4000/realtime/v1`. */
export const REALTIME_URL = requiredEnv('SWITCHBOARD_URL').replace(/\/+$/, '')
/** HS256 secret the hub verifies JWTs with. */
export const JWT_SECRET = requiredEnv('SWITCHBOARD_JWT_SECRET')
/** The same endpoint with a ws:// scheme, as realtime-js expects it. */
/** An opaque `sb_publishable_…` key the hub lists in `api_keys` as `anon`, if set. */
export const PUBLISHABLE_KEY = process.env.SWITCHBOARD_PUBLISHABLE_KEY

export const WS_ENDPOINT = REALTIME_URL.replace(/^http/i, 'ws')
/** Project base URL for supabase-js (it appends `/realtime/v1` itself). */
export const PROJECT_URL = REALTIME_URL.replace(/\/realtime\/v1$/, '')

/** How long to wait for any single expected event before failing with a message. */
export const EVENT_DEADLINE_MS = 8000

const b64url = (buf) => Buffer.from(buf).toString('base64url')

/** Mints an HS256 JWT with `{role, sub, exp, iat}` (exp relative to now, in seconds). */
export function mintToken({ role = 'authenticated', sub = 'user-1', expiresIn = 3600 } = {}) {
  const now = Math.floor(Date.now() / 1000)
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))
  const claims = b64url(JSON.stringify({ role, sub, iat: now, exp: now + expiresIn }))
  const signature = crypto
    .createHmac('sha256', JWT_SECRET)
    .update(`${header}.${claims}`)
    .digest('base64url')
  return `${header}.${claims}.${signature}`
}

/** The project key clients connect with: an `anon` JWT, as on the hosted platform. */
export const ANON_KEY = mintToken({ role: 'anon', sub: 'anon', expiresIn: 24 * 3600 })

/** A topic name no other test uses. */
export function uniqueTopic(prefix) {
  return `${prefix}-${crypto.randomUUID().slice(0, 8)}`
}

/** A queue of observed events that tests await one by one, each with a deadline. */
export class Inbox {
  constructor(what) {
    this.what = what
    this.items = []
    this.waiters = []
  }

  push(item) {
    this.items.push(item)
    for (const waiter of [...this.waiters]) waiter()
  }

  /** Removes and returns the first item matching `pred`, waiting for it if needed. */
  next(pred = () => true, what = 'an event', ms = EVENT_DEADLINE_MS) {
    return new Promise((resolve, reject) => {
      const tryTake = () => {
        const i = this.items.findIndex(pred)
        if (i < 0) return false
        const [item] = this.items.splice(i, 1)
        resolve(item)
        return true
      }
      if (tryTake()) return
      const waiter = () => {
        if (tryTake()) done()
      }
      const timer = setTimeout(() => {
        done()
        const seen = this.items.map((x) => JSON.stringify(x, replacer)).join('\n    ')
        reject(
          new Error(
            `timed out after ${ms} ms waiting for ${what} on ${this.what}; ` +
              `unconsumed items:\n    ${seen || '(none)'}`
          )
        )
      }, ms)
      const done = () => {
        clearTimeout(timer)
        this.waiters = this.waiters.filter((w) => w !== waiter)
      }
      this.waiters.push(waiter)
    })
  }

  /** Items received so far and not consumed by `next`. */
  pending(pred = () => true) {
    return this.items.filter(pred)
  }
}

function replacer(_key, value) {
  if (value instanceof ArrayBuffer) return `<ArrayBuffer ${hex(value)}>`
  if (value instanceof Error) return `Error(${value.message})`
  return value
}

function hex(buf) {
  return Buffer.from(buf).toString('hex')
}

/** Renders one raw frame for the trace: text as is, binary as hex plus a readable view. */
function showFrame(data) {
  if (typeof data === 'string') return data
  const bytes = Buffer.isBuffer(data) ? data : Buffer.from(data)
  const printable = bytes.toString('latin1').replace(/[^\x20-\x7e]/g, '.')
  return `<binary ${bytes.length} B> ${bytes.toString('hex')} |${printable}|`
}

/** Records raw frames of all clients in a test, in order. */
export class Trace {
  constructor() {
    this.start = Date.now()
    this.lines = []
    /** The latest socket opened under each label, so a test can cut it abruptly. */
    this.sockets = {}
  }

  note(label, dir, text) {
    const t = String(Date.now() - this.start).padStart(5)
    this.lines.push(`${t}ms ${label} ${dir} ${text}`)
  }

  /** A `ws` WebSocket subclass that logs every frame under `label`. */
  transport(label) {
    const trace = this
    return class TracedWebSocket extends WebSocket {
      constructor(url, protocols, options) {
        super(url, protocols, options)
        trace.sockets[label] = this
        trace.note(label, '**', `connect ${url}`)
        this.addEventListener('message', (ev) => trace.note(label, '<-', showFrame(ev.data)))
        this.addEventListener('close', (ev) =>
          trace.note(label, '**', `closed code=${ev.code} reason=${JSON.stringify(ev.reason)}`)
        )
        this.addEventListener('error', (ev) =>
          trace.note(label, '**', `error ${ev.message ?? ev.error ?? ''}`)
        )
        this.on('unexpected-response', (_req, res) =>
          trace.note(label, '**', `upgrade refused: HTTP ${res.statusCode}`)
        )
      }

      send(data, ...rest) {
        trace.note(label, '->', showFrame(data))
        return super.send(data, ...rest)
      }
    }
  }

  dump() {
    return `--- frames (${this.lines.length}) ---\n${this.lines.join('\n')}\n--- end of frames ---`
  }
}

/** One test's clients and trace; everything it opened is closed when the test ends. */
export class Session {
  constructor() {
    this.trace = new Trace()
    this.clients = []
  }

  /**
   * A realtime-js client (not yet connected; `subscribe` connects it). `endpoint` picks
   * another hub (cluster tests); the default is `SWITCHBOARD_URL`'s.
   */
  client(label, { vsn, apikey = ANON_KEY, token, endpoint = WS_ENDPOINT, ...options } = {}) {
    const client = new RealtimeClient(endpoint, {
      transport: this.trace.transport(label),
      params: { apikey },
      ...(vsn ? { vsn } : {}),
      logger: (kind, msg) => {
        if (kind === 'channel' || kind === 'error') this.trace.note(label, '..', `${kind}: ${msg}`)
      },
      ...options,
    })
    if (token) client.setAuth(token)
    this.clients.push(client)
    return client
  }

  /** A supabase-js client for the hub, with realtime over `ws`. */
  supabase(label, { key = ANON_KEY } = {}) {
    const client = createClient(PROJECT_URL, key, {
      auth: { persistSession: false, autoRefreshToken: false },
      realtime: { transport: this.trace.transport(label) },
    })
    this.clients.push(client.realtime)
    return client
  }

  async close() {
    for (const client of this.clients) {
      for (const channel of [...client.getChannels()]) {
        try {
          channel.teardown()
        } catch {}
      }
      try {
        await client.disconnect()
      } catch {}
    }
  }
}

/**
 * Subscribes `channel` and resolves with its status inbox once SUBSCRIBED; fails with the
 * status and error the client reported otherwise.
 */
export async function subscribe(channel) {
  const statuses = new Inbox(`${channel.topic} statuses`)
  channel.subscribe((status, err) => statuses.push({ status, err: err?.message }))
  const first = await statuses.next(() => true, 'the join outcome', 12000)
  if (first.status !== 'SUBSCRIBED') {
    throw new Error(`join of ${channel.topic}: expected SUBSCRIBED, got ${first.status} (${first.err})`)
  }
  return statuses
}

/** Collects events of `type` (broadcast, presence, system, postgres_changes) on a channel. */
export function collect(channel, type, filter = {}) {
  const inbox = new Inbox(`${channel.topic} ${type} ${JSON.stringify(filter)}`)
  channel.on(type, filter, (payload) => inbox.push(payload))
  return inbox
}

/** Defines a test with its own timeout that prints the frame trace on failure. */
export function scenario(name, body, { timeout = 20000 } = {}) {
  test(name, { timeout }, async () => {
    const session = new Session()
    try {
      await body(session)
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e))
      err.message = `${err.message}\n${session.trace.dump()}`
      throw err
    } finally {
      await session.close()
    }
  })
}
