// The inspector page: sign-in, the live stream of snapshots (server-sent events, one a
// second), the theme toggle, and wiring for the "try it" panel.

import { $, render, copyText } from './views.js'
import { WINDOW_MS } from './chart.js'
import { closeAll, initTryIt, setCanMint, setTables } from './tryit.js'

const THEME_KEY = 'switchboard-inspector-theme'
/** A snapshot older than this marks the page as stale. */
const STALE_MS = 3500
/** Streams refused in a row (while the snapshot answers) before the page gives up. */
const MAX_REFUSALS = 3
const SESSION_ENDED = 'Your session ended. Sign in again.'
const SESSION_UNKNOWN =
  'Your session is not known to this hub node (it restarted, or a load balancer sent you to another node); sign in again.'

let stream = null
let samples = []
let replaceSamples = true
let lastSnapshotAt = 0
let lastSnapshot = null
let expiresAt = 0 // unix seconds: when the session ends
let refusals = 0 // streams refused in a row since the last snapshot

function live(state, text) {
  const node = $('live')
  node.dataset.state = state
  node.textContent = text
}

function showSignIn(message) {
  stopStream()
  closeAll()
  $('dashboard').hidden = true
  $('sign-out').hidden = true
  $('sign-in').hidden = false
  const err = $('sign-in-error')
  err.hidden = !message
  err.textContent = message ?? ''
  live('off', 'signed out')
  $('credential').focus()
}

function showDashboard() {
  refusals = 0
  $('sign-in').hidden = true
  $('dashboard').hidden = false
  $('sign-out').hidden = false
  $('credential').value = ''
  startStream()
}

function stopStream() {
  if (stream) stream.close()
  stream = null
}

function onSnapshot(snap) {
  if (replaceSamples) samples = []
  replaceSamples = false
  const lastSeq = samples.length ? samples[samples.length - 1].seq : 0
  for (const s of snap.samples) if (s.seq > lastSeq) samples.push(s)
  const oldest = snap.at - WINDOW_MS - 5000
  while (samples.length && samples[0].t < oldest) samples.shift()
  lastSnapshot = snap
  lastSnapshotAt = Date.now()
  refusals = 0
  live('ok', 'live')
  render(snap, samples, { onCopy, onWebhook })
  setTables(snap.tables.enabled)
  setCanMint(snap.hub.can_mint)
}

async function onCopy(text, button) {
  const ok = await copyText(text)
  const label = button.textContent
  button.textContent = ok ? 'Copied' : 'Copy failed'
  button.dataset.copied = ok ? 'yes' : 'no'
  setTimeout(() => {
    button.textContent = label === 'Copied' || label === 'Copy failed' ? 'Copy' : label
  }, 1500)
}

/** A webhook button: pause, resume or retry; the next snapshot shows the new state. */
async function onWebhook(name, action, button) {
  const note = $('webhooks-note')
  button.disabled = true
  try {
    const res = await fetch(`/inspector/api/webhooks/${encodeURIComponent(name)}/${action}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{}',
    })
    const body = await res.json().catch(() => ({}))
    note.hidden = false
    note.dataset.state = res.ok ? 'ok' : 'error'
    note.textContent = res.ok ? `${name}: ${action} done.` : `${name}: ${body.message ?? body.error ?? `the hub answered ${res.status}`}`
  } catch {
    note.hidden = false
    note.dataset.state = 'error'
    note.textContent = 'The hub cannot be reached.'
  } finally {
    button.disabled = false
  }
}

function startStream() {
  stopStream()
  replaceSamples = true
  live('warn', 'connecting')
  const es = new EventSource('/inspector/api/stream')
  stream = es
  es.addEventListener('open', () => {
    replaceSamples = true
  })
  es.addEventListener('snapshot', (ev) => {
    try {
      onSnapshot(JSON.parse(ev.data))
    } catch (err) {
      console.warn('bad snapshot', err)
    }
  })
  es.addEventListener('signed_out', () => showSignIn(SESSION_ENDED))
  es.addEventListener('error', () => {
    if (stream !== es) return
    live('warn', 'reconnecting')
    // CLOSED: the hub answered, but not with a stream (EventSource retries by itself
    // only after a dropped connection).
    if (es.readyState === EventSource.CLOSED) streamRefused()
  })
}

/**
 * The stream was refused: a 401 means this hub node does not know the session (it
 * ended, the node restarted, or a load balancer sent the page to another node); then the
 * form. Anything else (the hub restarting, a proxy error) is retried.
 */
async function streamRefused() {
  stopStream()
  refusals += 1
  let status = null
  try {
    status = (await fetch('/inspector/api/snapshot')).status
  } catch {}
  if ($('dashboard').hidden) return
  if (status === 401 || (status === 200 && refusals >= MAX_REFUSALS)) {
    showSignIn(Date.now() / 1000 >= expiresAt ? SESSION_ENDED : SESSION_UNKNOWN)
  } else {
    live('warn', 'reconnecting')
    setTimeout(() => !$('dashboard').hidden && !stream && startStream(), 2000)
  }
}

async function signIn(event) {
  event.preventDefault()
  const button = $('sign-in-button')
  button.disabled = true
  try {
    const res = await fetch('/inspector/api/session', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ credential: $('credential').value }),
    })
    const body = await res.json().catch(() => ({}))
    if (res.ok) {
      expiresAt = body.expires_at ?? 0
      showDashboard()
    } else showSignIn(body.error ?? `The hub answered ${res.status}.`)
  } catch {
    showSignIn('The hub cannot be reached.')
  } finally {
    button.disabled = false
  }
}

async function signOut() {
  await fetch('/inspector/api/session', { method: 'DELETE' }).catch(() => {})
  showSignIn(null)
}

function effectiveTheme() {
  const set = document.documentElement.dataset.theme
  if (set) return set
  return matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'
}

function toggleTheme() {
  const next = effectiveTheme() === 'dark' ? 'light' : 'dark'
  document.documentElement.dataset.theme = next
  try {
    localStorage.setItem(THEME_KEY, next)
  } catch {}
  if (lastSnapshot) render(lastSnapshot, samples, { onCopy, onWebhook })
}

async function boot() {
  $('sign-in-form').addEventListener('submit', signIn)
  $('sign-out').addEventListener('click', signOut)
  $('theme-toggle').addEventListener('click', toggleTheme)
  initTryIt()
  new ResizeObserver(() => lastSnapshot && render(lastSnapshot, samples, { onCopy, onWebhook })).observe($('lag-chart'))
  setInterval(() => {
    if (stream && lastSnapshotAt && Date.now() - lastSnapshotAt > STALE_MS) live('warn', 'stale')
  }, 1000)
  try {
    const body = await (await fetch('/inspector/api/session')).json()
    if (body.signed_in === true) {
      expiresAt = body.expires_at ?? 0
      showDashboard()
      return
    }
  } catch {}
  showSignIn(null)
}

boot()
