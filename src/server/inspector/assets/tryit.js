// The "try it" panel and the broadcast/presence tester: each opens its own connection to
// the hub's WebSocket with a user's token (pasted, or minted by the hub for a role and
// claims) and shows exactly the frames that subscriber receives.

import { Socket, socketUrl } from './phoenix.js'
import { $, el } from './views.js'

const MAX_LOG = 200
let canMint = true
let trying = null // {socket, channel}
let room = null // {socket, channel, presence}

const random = () => Math.random().toString(36).slice(2, 8)

function status(id, state, text) {
  const node = $(id)
  node.dataset.state = state
  node.textContent = text
}

/** The claims of a JWT, for display only (the hub verifies it). */
function claimsOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')))
  } catch {
    return {}
  }
}

/** Who `token` is: its role (an API key's as the hub reads it) and subject. */
async function who(token) {
  const c = claimsOf(token)
  const role = c.role ?? (await checkToken(token))?.role ?? 'unknown role'
  return c.sub ? `${role}, sub ${c.sub}` : role
}

/** The hub's check of `token` (`valid`, and `role` or `reason`); null if it failed. */
async function checkToken(token) {
  try {
    const res = await fetch('/inspector/api/token/check', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token }),
    })
    return res.ok ? await res.json() : null
  } catch {
    return null
  }
}

function logItem(listId, kind, title, body, when = new Date()) {
  const list = $(listId)
  const item = el(
    'li',
    { dataset: { kind } },
    el(
      'div',
      { class: 'event-head' },
      el('span', { class: 'badge', dataset: { kind } }, kind),
      el('strong', { class: 'mono' }, title),
      el('time', { datetime: when.toISOString() }, when.toLocaleTimeString())
    ),
    body == null ? null : el('pre', {}, typeof body === 'string' ? body : JSON.stringify(body, null, 2))
  )
  list.prepend(item)
  while (list.children.length > MAX_LOG) list.lastElementChild.remove()
}

/**
 * Why the hub would refuse `token` at connect, in its own words; null when it would take
 * it (or the check could not be made). A browser's WebSocket cannot read a refusal.
 */
async function refusalOf(token) {
  const body = await checkToken(token)
  return body?.valid === false ? body.reason : null
}

/** Connects `socket`; on a refusal, throws the hub's reason for `token` if it has one. */
async function connect(socket, token) {
  try {
    await socket.connect()
  } catch {
    const reason = await refusalOf(token)
    throw new Error(reason ? `The hub refused the token: ${reason}` : 'The hub refused the connection.')
  }
}

/** The subscriber's token: the pasted one, or one the hub mints for role and claims. */
async function resolveToken() {
  const mode = document.querySelector('input[name="who"]:checked').value
  if (mode === 'paste') {
    const token = $('try-token').value.trim()
    if (!token) throw new Error("Paste a user's token first.")
    const reason = await refusalOf(token)
    if (reason) throw new Error(`The hub refuses this token: ${reason}`)
    return token
  }
  if (!canMint) throw new Error('This hub cannot mint tokens: paste one instead.')
  let claims
  try {
    claims = JSON.parse($('try-claims').value || '{}')
  } catch {
    throw new Error('Claims must be a JSON object, e.g. {"sub": "…"}.')
  }
  if (claims && typeof claims === 'object' && !Array.isArray(claims) && claims.sub === '') delete claims.sub
  const res = await fetch('/inspector/api/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ role: $('try-role').value, claims }),
  })
  const body = await res.json().catch(() => ({}))
  if (!res.ok) throw new Error(body.error ?? `The hub answered ${res.status}.`)
  return body.token
}

function showWho() {
  const mode = document.querySelector('input[name="who"]:checked').value
  $('who-paste').hidden = mode !== 'paste'
  $('who-mint').hidden = mode !== 'mint'
}

/** Whether the hub can mint tokens (it has an HS256 secret). */
export function setCanMint(value) {
  if (value === canMint) return
  canMint = value
  $('mint-note').hidden = value
  const mint = document.querySelector('input[name="who"][value="mint"]')
  mint.disabled = !value
  if (!value && mint.checked) {
    document.querySelector('input[name="who"][value="paste"]').checked = true
    showWho()
  }
}

const tableLabel = ([schema, table]) => `${schema}.${table}`

/**
 * Offers the enabled tables (and "all") in the table picker. Each option's value is
 * `[schema, table]` as JSON, so a dot in a name stays where it is. The user's choice is
 * kept when the list changes: a table no longer listed (disabled, or the database is
 * down) stays chosen and says so, rather than the picker quietly choosing another.
 */
export function setTables(tables) {
  const select = $('try-table')
  const values = ['*', ...tables.map((t) => JSON.stringify([t.schema, t.table]))]
  const key = values.join('\n')
  if (select.dataset.key === key) return
  select.dataset.key = key
  // Until the user picks, the first table is the default choice.
  const choice = select.dataset.picked ? select.value : values[1] ?? '*'
  const options = values.map((v) => el('option', { value: v }, v === '*' ? 'every enabled table' : tableLabel(JSON.parse(v))))
  if (!values.includes(choice)) {
    const label = `${tableLabel(JSON.parse(choice))} (not in the enabled list now)`
    options.push(el('option', { value: choice, dataset: { unlisted: 'yes' } }, label))
  }
  select.replaceChildren(...options)
  select.value = choice
}

/** Subscribe stays enabled: subscribing again replaces the running subscriber. */
function setTrying(on) {
  $('try-stop').disabled = !on
}

function stopTry() {
  const t = trying
  trying = null
  if (t) {
    t.channel.leave()
    t.socket.disconnect()
  }
  setTrying(false)
}

/** "Connection closed (code 1006)", with the reason when the close frame gave one. */
function closedText(what, ev) {
  return `${what} (code ${ev.code}${ev.reason ? `: ${ev.reason}` : ''}).`
}

/** The hub closed a channel: after its `system` error if one came, else on its own. */
function closedByHub(id) {
  const node = $(id)
  const said = node.dataset.state === 'error' ? `${node.textContent} ` : ''
  status(id, 'error', `${said}The hub closed the channel.`)
}

function logChange(p) {
  const d = p?.data ?? {}
  const body = {}
  if (d.record && Object.keys(d.record).length) body.record = d.record
  if (d.old_record && Object.keys(d.old_record).length) body.old_record = d.old_record
  if (d.errors) body.errors = d.errors
  const when = d.commit_timestamp ? new Date(d.commit_timestamp) : new Date()
  logItem('try-log', d.type ?? 'change', `${d.schema}.${d.table}`, body, when)
}

async function startTry(event) {
  event.preventDefault()
  stopTry()
  status('try-status', 'busy', 'Connecting…')
  let token
  try {
    token = await resolveToken()
  } catch (err) {
    status('try-status', 'error', err.message)
    return
  }
  const choice = $('try-table').value || '*'
  const [schema, table] = choice === '*' ? ['*', '*'] : JSON.parse(choice)
  const entry = { event: $('try-event').value, schema, table }
  const filter = $('try-filter').value.trim()
  if (filter) entry.filter = filter
  const label = `${choice === '*' ? 'every enabled table' : tableLabel([schema, table])}${filter ? ` where ${filter}` : ''} as ${await who(token)}`

  const socket = new Socket(socketUrl(token), {
    onClose: (ev) => {
      if (trying?.socket !== socket) return
      stopTry()
      status('try-status', 'error', closedText('Connection closed', ev))
    },
  })
  try {
    await connect(socket, token)
  } catch (err) {
    status('try-status', 'error', err.message)
    return
  }
  const channel = socket.channel(`inspector-try-${random()}`, {
    config: {
      broadcast: { ack: false, self: false },
      presence: { key: '', enabled: false },
      postgres_changes: [entry],
      private: false,
    },
    access_token: token,
  })
  trying = { socket, channel }
  setTrying(true)
  channel.on('postgres_changes', logChange)
  channel.on('system', (p) => {
    if (p.extension === 'postgres_changes' && p.status === 'ok') {
      status('try-status', 'subscribed', `Subscribed to ${label}. Changes appear below as they are committed.`)
    } else if (p.status === 'error') {
      logItem('try-log', 'error', 'system', p.message)
      status('try-status', 'error', p.message)
    }
  })
  channel.on('phx_close', () => {
    // A closed socket closes its channels too: onClose tells that, with its code.
    if (trying?.channel !== channel || !socket.isOpen()) return
    stopTry()
    closedByHub('try-status')
  })
  try {
    const reply = await channel.join()
    if (trying?.channel !== channel) return // stopped, or the socket closed meanwhile
    if (reply.status !== 'ok') {
      const reason = reply.response?.reason ?? JSON.stringify(reply.response)
      status('try-status', 'error', `Join refused: ${reason}`)
      stopTry()
    } else if ($('try-status').dataset.state === 'busy') {
      status('try-status', 'busy', 'Joined; waiting for the hub to confirm the subscription…')
    }
  } catch (err) {
    if (trying?.channel !== channel) return
    status('try-status', 'error', err.message)
    stopTry()
  }
}

/* Broadcast and presence tester */

function renderPresence() {
  const list = $('ps-present')
  const keys = Object.entries(room?.presence ?? {}).filter(([, metas]) => metas.length)
  if (!keys.length) {
    list.replaceChildren(el('li', { class: 'empty' }, 'Nobody is tracked on this topic.'))
    return
  }
  list.replaceChildren(
    ...keys.map(([key, metas]) => {
      const { phx_ref, phx_ref_prev, ...shown } = metas[metas.length - 1]
      return el('li', { title: JSON.stringify(shown), dataset: { key } }, metas.length > 1 ? `${key} ×${metas.length}` : key)
    })
  )
}

function applyPresence(state, diff) {
  if (state) {
    room.presence = Object.fromEntries(Object.entries(state).map(([k, v]) => [k, [...v.metas]]))
  }
  if (diff) {
    for (const [key, { metas }] of Object.entries(diff.leaves ?? {})) {
      const gone = new Set(metas.map((m) => m.phx_ref))
      room.presence[key] = (room.presence[key] ?? []).filter((m) => !gone.has(m.phx_ref))
    }
    for (const [key, { metas }] of Object.entries(diff.joins ?? {})) {
      room.presence[key] = [...(room.presence[key] ?? []), ...metas]
    }
  }
  renderPresence()
}

function leaveRoom() {
  const r = room
  room = null
  if (r) {
    r.channel.leave()
    r.socket.disconnect()
  }
  $('ps-live').hidden = true
  $('ps-join').disabled = false
  $('ps-leave').disabled = true
}

async function joinRoom(event) {
  event.preventDefault()
  leaveRoom()
  const name = $('ps-topic').value.trim()
  if (!name) {
    status('ps-status', 'error', 'Enter a topic.')
    return
  }
  status('ps-status', 'busy', 'Connecting…')
  let token
  try {
    token = await resolveToken()
  } catch (err) {
    status('ps-status', 'error', `${err.message} (the tester uses the subscriber chosen in “Try it”)`)
    return
  }
  const socket = new Socket(socketUrl(token), {
    onClose: (ev) => {
      if (room?.socket !== socket) return
      leaveRoom()
      status('ps-status', 'error', closedText('Connection closed', ev))
    },
  })
  try {
    await connect(socket, token)
  } catch (err) {
    status('ps-status', 'error', err.message)
    return
  }
  const channel = socket.channel(name, {
    config: {
      broadcast: { ack: true, self: true },
      presence: { key: `inspector-${random()}`, enabled: true },
      postgres_changes: [],
      private: false,
    },
    access_token: token,
  })
  const joined = `Joined ${name} as ${await who(token)}.`
  room = { socket, channel, presence: {}, joined }
  channel.on('broadcast', (p) => logItem('ps-log', 'broadcast', p.event, p.payload))
  channel.on('presence_state', (state) => applyPresence(state, null))
  channel.on('presence_diff', (diff) => {
    applyPresence(null, diff)
    const joins = Object.keys(diff.joins ?? {})
    const leaves = Object.keys(diff.leaves ?? {})
    logItem('ps-log', 'presence', [joins.length ? `+${joins.join(', +')}` : '', leaves.length ? `−${leaves.join(', −')}` : ''].filter(Boolean).join(' '), null)
  })
  channel.on('system', (p) => {
    if (p.status === 'error') status('ps-status', 'error', p.message)
  })
  channel.on('phx_close', () => {
    if (room?.channel !== channel || !socket.isOpen()) return
    leaveRoom()
    closedByHub('ps-status')
  })
  try {
    const reply = await channel.join()
    if (room?.channel !== channel) return // left, or the socket closed meanwhile
    if (reply.status !== 'ok') {
      status('ps-status', 'error', `Join refused: ${reply.response?.reason ?? JSON.stringify(reply.response)}`)
      leaveRoom()
      return
    }
  } catch (err) {
    if (room?.channel !== channel) return
    status('ps-status', 'error', err.message)
    leaveRoom()
    return
  }
  $('ps-live').hidden = false
  $('ps-join').disabled = true
  $('ps-leave').disabled = false
  renderPresence()
  status('ps-status', 'joined', joined)
}

function jsonInput(id) {
  try {
    const v = JSON.parse($(id).value || '{}')
    if (v && typeof v === 'object' && !Array.isArray(v)) return v
  } catch {}
  throw new Error('Enter a JSON object, e.g. {"text": "hello"}.')
}

/** A push succeeded: an earlier refusal no longer describes the room. */
function pushed() {
  if (room) status('ps-status', 'joined', room.joined)
}

/**
 * Pushes on the room's channel; the reply or failure is shown unless the room was left
 * meanwhile (the hub closed the channel: its reason, already shown, stays).
 */
async function pushToRoom(what, build) {
  if (!room) return
  const channel = room.channel
  try {
    const [event, payload] = build()
    const reply = await channel.push(event, payload)
    if (room?.channel !== channel) return
    if (reply.status !== 'ok') status('ps-status', 'error', `${what} refused: ${JSON.stringify(reply.response)}`)
    else pushed()
  } catch (err) {
    if (room?.channel !== channel) return
    status('ps-status', 'error', err.message)
  }
}

function send(event) {
  event.preventDefault()
  return pushToRoom('Broadcast', () => ['broadcast', { type: 'broadcast', event: $('ps-event').value || 'message', payload: jsonInput('ps-payload') }])
}

function track(event) {
  event.preventDefault()
  return pushToRoom('Track', () => ['presence', { type: 'presence', event: 'track', payload: jsonInput('ps-presence') }])
}

function untrack() {
  return pushToRoom('Untrack', () => ['presence', { type: 'presence', event: 'untrack' }])
}

/** Closes every test connection (sign-out). */
export function closeAll() {
  stopTry()
  leaveRoom()
  status('try-status', 'idle', 'Not subscribed.')
  status('ps-status', 'idle', 'Not joined.')
}

export function initTryIt() {
  $('try-table').addEventListener('change', (ev) => {
    ev.target.dataset.picked = 'yes'
  })
  for (const radio of document.querySelectorAll('input[name="who"]')) radio.addEventListener('change', showWho)
  $('try-form').addEventListener('submit', startTry)
  $('try-stop').addEventListener('click', () => {
    stopTry()
    status('try-status', 'idle', 'Stopped.')
  })
  $('try-clear').addEventListener('click', () => $('try-log').replaceChildren())
  $('ps-form').addEventListener('submit', joinRoom)
  $('ps-leave').addEventListener('click', () => {
    leaveRoom()
    status('ps-status', 'idle', 'Left.')
  })
  $('ps-send').addEventListener('submit', send)
  $('ps-track').addEventListener('submit', track)
  $('ps-untrack').addEventListener('click', untrack)
  showWho()
}
