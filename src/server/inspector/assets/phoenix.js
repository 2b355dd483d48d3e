// A small Phoenix / Supabase Realtime client: v1 JSON frames
// ({topic, event, payload, ref, join_ref}), a heartbeat every 25 s, joins, pushes with
// replies, and channel events. Just enough for the inspector's "try it" panel to talk to
// the hub exactly as a real client does.

const HEARTBEAT_MS = 25000
const REPLY_TIMEOUT_MS = 10000

/** The hub's own WebSocket URL for `apikey`, with the v1 serializer. */
export function socketUrl(apikey) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:'
  const query = new URLSearchParams({ apikey, vsn: '1.0.0' })
  return `${scheme}//${location.host}/realtime/v1/websocket?${query}`
}

export class Socket {
  /**
   * @param {string} url
   * @param {{onOpen?: () => void, onClose?: (ev: CloseEvent) => void, onError?: () => void}} hooks
   */
  constructor(url, hooks = {}) {
    this.url = url
    this.hooks = hooks
    this.ref = 0
    this.pending = new Map() // ref -> {resolve, reject, timer}
    this.channels = new Map() // topic -> Channel
    this.ws = null
    this.heartbeat = null
  }

  nextRef() {
    this.ref += 1
    return String(this.ref)
  }

  /** Opens the socket; resolves once it is open. */
  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url)
      this.ws = ws
      ws.addEventListener('open', () => {
        this.heartbeat = setInterval(() => {
          this.push('phoenix', 'heartbeat', {}).catch(() => {})
        }, HEARTBEAT_MS)
        this.hooks.onOpen?.()
        resolve()
      })
      ws.addEventListener('message', (ev) => this.receive(ev.data))
      ws.addEventListener('error', () => {
        this.hooks.onError?.()
        reject(new Error('the WebSocket could not connect (is the token valid?)'))
      })
      ws.addEventListener('close', (ev) => {
        clearInterval(this.heartbeat)
        for (const { reject: fail, timer } of this.pending.values()) {
          clearTimeout(timer)
          fail(new Error('socket closed'))
        }
        this.pending.clear()
        for (const ch of this.channels.values()) ch.emit('phx_close', {})
        this.hooks.onClose?.(ev)
      })
    })
  }

  receive(data) {
    if (typeof data !== 'string') return
    let msg
    try {
      msg = JSON.parse(data)
    } catch {
      return
    }
    if (msg.event === 'phx_reply' && msg.ref && this.pending.has(msg.ref)) {
      const { resolve, timer } = this.pending.get(msg.ref)
      clearTimeout(timer)
      this.pending.delete(msg.ref)
      resolve(msg.payload)
    }
    const ch = this.channels.get(msg.topic)
    if (ch && msg.event !== 'phx_reply') ch.emit(msg.event, msg.payload)
  }

  /** Sends one frame; resolves with the reply payload ({status, response}). */
  push(topic, event, payload, joinRef = null) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new Error('not connected'))
    }
    const ref = this.nextRef()
    const frame = { topic, event, payload, ref }
    if (joinRef) frame.join_ref = joinRef
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(ref)
        reject(new Error(`no reply to ${event} within ${REPLY_TIMEOUT_MS / 1000} s`))
      }, REPLY_TIMEOUT_MS)
      this.pending.set(ref, { resolve, reject, timer })
      this.ws.send(JSON.stringify(frame))
    })
  }

  /** A channel on `realtime:<name>`. */
  channel(name, params) {
    const ch = new Channel(this, `realtime:${name}`, params)
    this.channels.set(ch.topic, ch)
    return ch
  }

  /** Whether the socket is open (in its close handlers it no longer is). */
  isOpen() {
    return this.ws?.readyState === WebSocket.OPEN
  }

  disconnect() {
    clearInterval(this.heartbeat)
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000)
  }
}

export class Channel {
  constructor(socket, topic, params) {
    this.socket = socket
    this.topic = topic
    this.params = params
    this.joinRef = null
    this.handlers = new Map() // event -> [callback]
  }

  /** `callback(payload)` for every `event` on this channel ('*' for all). */
  on(event, callback) {
    if (!this.handlers.has(event)) this.handlers.set(event, [])
    this.handlers.get(event).push(callback)
    return this
  }

  emit(event, payload) {
    for (const cb of this.handlers.get(event) ?? []) cb(payload)
    for (const cb of this.handlers.get('*') ?? []) cb(event, payload)
  }

  /** Joins; resolves with the reply payload ({status: 'ok' | 'error', response}). */
  join() {
    this.joinRef = this.socket.nextRef()
    const ref = this.joinRef
    const frame = { topic: this.topic, event: 'phx_join', payload: this.params, ref, join_ref: ref }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.socket.pending.delete(ref)
        reject(new Error('no reply to the join'))
      }, REPLY_TIMEOUT_MS)
      this.socket.pending.set(ref, { resolve, reject, timer })
      this.socket.ws.send(JSON.stringify(frame))
    })
  }

  push(event, payload) {
    return this.socket.push(this.topic, event, payload, this.joinRef)
  }

  leave() {
    this.socket.channels.delete(this.topic)
    return this.push('phx_leave', {}).catch(() => {})
  }
}
