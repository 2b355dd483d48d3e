// What the browser suites share: the hub, database and browser they are given
// (tests/inspector_browser.rs sets them), the fixture's two customers, and tokens.

import crypto from 'node:crypto'

function requiredEnv(name) {
  const value = process.env[name]
  if (!value) throw new Error(`environment variable ${name} must be set`)
  return value
}

export const HUB = requiredEnv('SWITCHBOARD_HTTP_URL').replace(/\/+$/, '')
export const JWT_SECRET = requiredEnv('SWITCHBOARD_JWT_SECRET')
export const DATABASE_URL = requiredEnv('SWITCHBOARD_DATABASE_URL')
export const CHROMIUM = requiredEnv('SWITCHBOARD_CHROMIUM')

/** The fixture's customers (tests/clients/fixture.sql: todos owned by them). */
export const ADA = '11111111-1111-4111-8111-111111111111'
export const BO = '22222222-2222-4222-8222-222222222222'
/** How long a page may take for anything it is waited on for. */
export const WAIT = 10000

/** An HS256 token for the hub with `claims`, valid for `expiresIn` seconds. */
export function mint(claims, expiresIn = 3600) {
  const now = Math.floor(Date.now() / 1000)
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url')
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ iat: now, exp: now + expiresIn, ...claims })}`
  const sig = crypto.createHmac('sha256', JWT_SECRET).update(head).digest('base64url')
  return `${head}.${sig}`
}
