// The capture chart: lag as a line and rows per second as faint bars over the last ten
// minutes (or since the first sample, at least a minute), drawn on a canvas in the theme's
// colours. Disconnected seconds are marked in red along the bottom.

export const WINDOW_MS = 10 * 60 * 1000
const MIN_SPAN_MS = 60 * 1000

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim()
}

/** A round number at or above `v` (1, 2, 5 × 10^n). */
function niceMax(v) {
  if (!(v > 0)) return 1
  const p = 10 ** Math.floor(Math.log10(v))
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p
  return 10 * p
}

export function formatMs(ms) {
  if (ms == null) return '–'
  if (ms < 1000) return `${Math.round(ms)} ms`
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`
  return `${Math.round(ms / 60000)} min`
}

/** Draws `samples` ({t, lag_ms, rows_per_sec, connected}) ending at `now`. */
export function drawChart(canvas, samples, now = Date.now()) {
  const dpr = window.devicePixelRatio || 1
  const width = canvas.clientWidth
  const height = canvas.clientHeight
  if (width === 0 || height === 0) return
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr)
    canvas.height = Math.round(height * dpr)
  }
  const ctx = canvas.getContext('2d')
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0)
  ctx.clearRect(0, 0, width, height)

  const pad = { top: 18, right: 8, bottom: 18, left: 8 }
  const w = width - pad.left - pad.right
  const h = height - pad.top - pad.bottom
  const first = samples.length ? samples[0].t : now
  const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - first))
  const start = now - span
  const x = (t) => pad.left + ((t - start) / span) * w
  const visible = samples.filter((s) => s.t >= start)
  const lagMax = niceMax(Math.max(0, ...visible.map((s) => s.lag_ms ?? 0)))
  const rateMax = niceMax(Math.max(0, ...visible.map((s) => s.rows_per_sec)))

  ctx.font = `11px ${cssVar('--font-mono') || 'monospace'}`
  ctx.fillStyle = cssVar('--muted')
  ctx.strokeStyle = cssVar('--grid')
  ctx.lineWidth = 1
  for (let i = 0; i <= 4; i++) {
    const y = Math.round(pad.top + (h * i) / 4) + 0.5
    ctx.beginPath()
    ctx.moveTo(pad.left, y)
    ctx.lineTo(pad.left + w, y)
    ctx.stroke()
  }
  ctx.textBaseline = 'bottom'
  ctx.textAlign = 'left'
  ctx.fillText(`lag ≤ ${formatMs(lagMax)}`, pad.left, pad.top - 3)
  ctx.textAlign = 'right'
  ctx.fillText(`rows/s ≤ ${rateMax}`, pad.left + w, pad.top - 3)
  ctx.textBaseline = 'top'
  ctx.textAlign = 'left'
  ctx.fillText(span >= 120000 ? `−${Math.round(span / 60000)} min` : `−${Math.round(span / 1000)} s`, pad.left, pad.top + h + 4)
  ctx.textAlign = 'right'
  ctx.fillText('now', pad.left + w, pad.top + h + 4)

  const barW = Math.max(1, (w * 1000) / span - 0.5)
  ctx.fillStyle = cssVar('--bars')
  for (const s of visible) {
    if (s.rows_per_sec <= 0) continue
    const bh = (s.rows_per_sec / rateMax) * h
    ctx.fillRect(x(s.t) - barW, pad.top + h - bh, barW, bh)
  }
  ctx.fillStyle = cssVar('--err')
  for (const s of visible) {
    if (!s.connected) ctx.fillRect(x(s.t) - barW, pad.top + h - 3, barW, 3)
  }

  ctx.strokeStyle = cssVar('--accent')
  ctx.lineWidth = 1.75
  ctx.lineJoin = 'round'
  ctx.beginPath()
  let drawing = false
  let prevT = null
  for (const s of visible) {
    const gap = prevT !== null && s.t - prevT > 2500
    prevT = s.t
    if (s.lag_ms == null || gap) {
      drawing = false
      if (s.lag_ms == null) continue
    }
    const px = x(s.t)
    const py = pad.top + h - (Math.min(s.lag_ms, lagMax) / lagMax) * h
    if (drawing) ctx.lineTo(px, py)
    else ctx.moveTo(px, py)
    drawing = true
  }
  ctx.stroke()

  canvas.dataset.samples = String(visible.length)
  canvas.dataset.lastSeq = String(samples.length ? samples[samples.length - 1].seq : 0)
}
