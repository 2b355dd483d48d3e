// Renders one snapshot of the hub into the dashboard's cards. Every value goes in through
// textContent, never as HTML.

import { drawChart, formatMs } from './chart.js'

export const $ = (id) => document.getElementById(id)

/** An element with attributes and children (strings become text). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue
    if (k === 'class') node.className = v
    else if (k === 'dataset') Object.assign(node.dataset, v)
    else if (k === 'text') node.textContent = v
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v)
    else node.setAttribute(k, v === true ? '' : v)
  }
  for (const c of children.flat()) {
    if (c == null) continue
    node.append(c instanceof Node ? c : document.createTextNode(String(c)))
  }
  return node
}

function setText(id, text) {
  const node = $(id)
  if (node.textContent !== text) node.textContent = text
}

function pill(id, state, text) {
  const node = $(id)
  node.dataset.state = state
  node.textContent = text
}

const number = new Intl.NumberFormat()
export const fmtInt = (n) => (n == null ? '–' : number.format(n))
export function fmtRate(r) {
  if (r == null) return '–'
  if (r === 0) return '0'
  if (r < 10) return r.toFixed(1)
  return number.format(Math.round(r))
}

export function ago(date, now = Date.now()) {
  const secs = Math.max(0, Math.round((now - new Date(date).getTime()) / 1000))
  if (secs < 60) return `${secs} s ago`
  if (secs < 3600) return `${Math.round(secs / 60)} min ago`
  if (secs < 86400) return `${Math.round(secs / 3600)} h ago`
  return new Date(date).toLocaleString()
}

function duration(secs) {
  if (secs < 60) return `${secs} s`
  if (secs < 3600) return `${Math.floor(secs / 60)} min`
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ${Math.floor((secs % 3600) / 60)} min`
  return `${Math.floor(secs / 86400)} d ${Math.floor((secs % 86400) / 3600)} h`
}

/** Copies `text`, with a fallback for pages not served over https or localhost. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text)
    return true
  } catch {
    const area = el('textarea', { readonly: true, class: 'offscreen' })
    area.value = text
    document.body.append(area)
    area.select()
    let ok = false
    try {
      ok = document.execCommand('copy')
    } catch {}
    area.remove()
    return ok
  }
}

function renderCapture(snap, samples) {
  const c = snap.capture
  if (!c) {
    pill('capture-state', 'off', 'no database')
    for (const id of ['capture-lag', 'capture-rate', 'capture-rows', 'capture-reconnects']) setText(id, '–')
    setText('capture-cursor', '–')
    setText('capture-commit', 'the hub runs without DATABASE_URL')
  } else {
    if (!c.connected) pill('capture-state', 'err', 'disconnected')
    else if (!c.ready) pill('capture-state', 'warn', 'catching up')
    else pill('capture-state', 'ok', 'live')
    setText('capture-lag', formatMs(c.lag_ms))
    setText('capture-rate', fmtRate(c.rows_per_sec))
    setText('capture-rows', fmtInt(c.rows_read))
    setText('capture-reconnects', fmtInt(c.reconnects))
    setText('capture-cursor', c.cursor ?? '–')
    setText('capture-commit', c.last_commit_ts ? ago(c.last_commit_ts, snap.at) : 'none yet')
  }
  // The hub keeps the error of the last disconnect, with no time: red while it still
  // holds, a muted past tense once capture is back.
  const err = $('capture-error')
  err.hidden = !c?.last_error
  if (c?.last_error) {
    err.className = c.connected ? 'muted small' : 'error'
    err.textContent = c.connected ? `Before the last reconnect: ${c.last_error}` : `Last error: ${c.last_error}`
  }
  drawChart($('lag-chart'), samples, snap.at)
}

// How a table is enabled, and which events reach subscribers when its publication
// publishes fewer than all (`publish = 'insert'`, say).
function viaText(row) {
  const via = row.via ?? '–'
  if (!row.events) return via
  return `${via} (${row.events.length ? row.events.join(', ') : 'no events'})`
}

function renderTables(snap, onCopy) {
  const t = snap.tables
  const body = $('tables-enabled')
  const showVia = t.enabled.some((row) => row.via)
  $('tables-via-head').hidden = !showVia
  body.replaceChildren(
    ...t.enabled.map((row) =>
      el(
        'tr',
        { dataset: { table: `${row.schema}.${row.table}` } },
        el('td', { class: 'mono' }, `${row.schema}.${row.table}`),
        showVia ? el('td', {}, viaText(row)) : null,
        el('td', { class: row.changes_per_sec > 0 ? 'num rate-hot' : 'num' }, fmtRate(row.changes_per_sec)),
        el('td', { class: 'num' }, fmtInt(row.changes_total)),
        el('td', { class: 'num' }, fmtInt(row.subscriptions))
      )
    )
  )
  setText('tables-count', snap.hub.database && !t.error ? `${t.enabled.length} enabled` : '')
  $('tables-empty').hidden = !snap.hub.database || t.enabled.length > 0 || !!t.error
  const err = $('tables-error')
  err.hidden = snap.hub.database && !t.error
  err.textContent = !snap.hub.database
    ? 'The hub runs without a database (DATABASE_URL), so postgres_changes is off.'
    : `Could not list enabled tables: ${t.error}`

  $('not-enabled').hidden = t.not_enabled.length === 0
  const list = $('not-enabled-list')
  // Rebuilt only when the set changes, so a click on "Copy" is not lost mid-render.
  const key = JSON.stringify(t.not_enabled.map((r) => [r.schema, r.table, r.refused_joins]))
  if (list.dataset.key === key) {
    for (const li of list.children) {
      const r = t.not_enabled.find((x) => `${x.schema}.${x.table}` === li.dataset.table)
      if (r) li.querySelector('.seen').textContent = `last ${ago(r.last_seen, snap.at)}`
    }
    return
  }
  list.dataset.key = key
  list.replaceChildren(
    ...t.not_enabled.map((r) => {
      const button = el('button', { class: 'button small', type: 'button' }, 'Copy')
      button.addEventListener('click', () => onCopy(r.enable_sql, button))
      return el(
        'li',
        { dataset: { table: `${r.schema}.${r.table}` } },
        el(
          'div',
          { class: 'fix-head' },
          el('strong', { class: 'mono' }, `${r.schema}.${r.table}`),
          el(
            'span',
            { class: 'muted small' },
            `${fmtInt(r.refused_joins)} refused join${r.refused_joins === 1 ? '' : 's'} · `,
            el('span', { class: 'seen' }, `last ${ago(r.last_seen, snap.at)}`)
          )
        ),
        el('div', { class: 'sql-row' }, el('code', { class: 'sql' }, r.enable_sql), button)
      )
    })
  )
}

function renderConnections(snap) {
  const c = snap.connections
  setText('conn-open', `${fmtInt(c.open)}`)
  setText('conn-channels', fmtInt(c.channels))
  setText('conn-topics', fmtInt(c.topics))
  $('conn-open').title = `of ${fmtInt(c.max)} allowed`
  $('topics-empty').hidden = snap.topics.length > 0
  // The snapshot lists at most 200 topics (MAX_TOPICS in snapshot.rs).
  const more = snap.topics.length >= 200 && c.topics > snap.topics.length
  $('topics-more').hidden = !more
  setText('topics-more', more ? `Showing the ${fmtInt(snap.topics.length)} busiest of ${fmtInt(c.topics)} topics (most channels, then most presences).` : '')
  $('topics-body').replaceChildren(
    ...snap.topics.map((t) =>
      el(
        'tr',
        { dataset: { topic: t.topic } },
        el(
          'td',
          { class: 'mono' },
          t.topic.replace(/^realtime:/, ''),
          t.private ? el('span', { class: 'tag' }, 'private') : null
        ),
        el('td', { class: 'num' }, fmtInt(t.channels)),
        el('td', { class: 'num' }, fmtInt(t.presence))
      )
    )
  )
}

/** The state pill of an endpoint: paused, failing (retrying), active; lost data wins. */
function webhookState(w) {
  if (w.data_lost) return ['err', 'data lost']
  if (w.state === 'paused') return ['err', 'paused']
  if (w.state === 'failing') return ['warn', `failing ×${w.failures}`]
  return ['ok', 'active']
}

/** The last error, with its HTTP status unless the error already starts with it. */
function webhookError(w) {
  const status = w.last_status ? `HTTP ${w.last_status}` : ''
  return status && !w.last_error.startsWith(status) ? `${status} · ${w.last_error}` : w.last_error
}

/** The buttons an endpoint offers in its state. */
function webhookActions(w) {
  if (w.state === 'paused') return ['resume', 'retry']
  if (w.state === 'failing') return ['retry', 'pause']
  return ['pause']
}

function renderWebhooks(snap, onWebhook) {
  const card = $('webhooks')
  const hooks = snap.webhooks
  card.hidden = !hooks
  if (!hooks) return
  const err = $('webhooks-error')
  err.hidden = !hooks.error
  if (hooks.error) err.textContent = `Could not read webhook endpoints: ${hooks.error}`
  $('webhooks-empty').hidden = hooks.endpoints.length > 0 || !!hooks.error
  setText('webhooks-count', hooks.endpoints.length ? `${hooks.endpoints.length} endpoint${hooks.endpoints.length === 1 ? '' : 's'}` : '')
  const body = $('webhooks-body')
  const rows = new Map([...body.children].map((tr) => [tr.dataset.endpoint, tr]))
  // Rows are updated in place and buttons rebuilt only when the state changes, so a
  // click is never lost to a re-render.
  const ordered = hooks.endpoints.map((w) => {
    let tr = rows.get(w.name)
    if (!tr) {
      tr = el('tr', { dataset: { endpoint: w.name } },
        el('td', { class: 'mono' }), el('td'), el('td', { class: 'num' }), el('td', { class: 'num' }),
        el('td'), el('td', { class: 'wrap' }), el('td', { class: 'num' }), el('td', { class: 'actions' }))
    }
    const [name, state, lag, behind, success, error, attempts, actions] = tr.children
    name.replaceChildren(w.name, el('div', { class: 'muted small' }, w.tables.join(', ')))
    name.title = w.url
    const [pillState, pillText] = webhookState(w)
    if (state.dataset.key !== `${pillState}:${pillText}`) {
      state.dataset.key = `${pillState}:${pillText}`
      state.replaceChildren(el('span', { class: 'pill', dataset: { state: pillState } }, pillText))
    }
    state.title = w.paused_reason ?? (w.data_lost ? `The log was pruned past this endpoint's cursor at ${w.data_lost_at}` : '')
    lag.textContent = `${fmtInt(w.lag_events)} event${w.lag_events === 1 ? '' : 's'}`
    behind.textContent = formatMs(Math.round(w.lag_seconds * 1000))
    success.textContent = w.last_success_at ? ago(w.last_success_at, snap.at) : 'never'
    error.textContent = w.last_error ? `${webhookError(w)}${w.last_error_at ? ` (${ago(w.last_error_at, snap.at)})` : ''}` : '–'
    attempts.textContent = fmtInt(w.attempts)
    const wanted = webhookActions(w).join(',')
    if (actions.dataset.key !== wanted) {
      actions.dataset.key = wanted
      actions.replaceChildren(
        ...webhookActions(w).map((a) => {
          const b = el('button', { class: 'button small', type: 'button', dataset: { action: a } }, a[0].toUpperCase() + a.slice(1))
          b.addEventListener('click', () => onWebhook(w.name, a, b))
          return b
        })
      )
    }
    return tr
  })
  if (ordered.length !== body.children.length || ordered.some((tr, i) => body.children[i] !== tr)) {
    body.replaceChildren(...ordered)
  }
}

/** Updates every card from `snap`; `samples` is the accumulated capture history. */
export function render(snap, samples, { onCopy, onWebhook }) {
  renderCapture(snap, samples)
  renderTables(snap, onCopy)
  renderConnections(snap)
  renderWebhooks(snap, onWebhook)
  setText('hub-version', `Switchboard ${snap.hub.version}`)
  setText('hub-uptime', `up ${duration(snap.hub.uptime_secs)}`)
}
