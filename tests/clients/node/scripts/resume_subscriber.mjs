// Used by tests/resume_clients.rs: a realtime-js client that opts in to resume with
// `params.resume`, subscribes to INSERTs of public.items as one user, and prints every
// change, system message and status as one JSON line. It runs until stdin closes.
// Env: SB_WS (ws://host:port/realtime/v1), SB_ANON, SB_TOKEN, SB_RESUME.
import { RealtimeClient } from '@supabase/realtime-js';
import WebSocket from 'ws';

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const client = new RealtimeClient(process.env.SB_WS, {
  params: { apikey: process.env.SB_ANON, resume: process.env.SB_RESUME },
  transport: WebSocket,
});
client.setAuth(process.env.SB_TOKEN);
client
  .channel('resume-test')
  .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'items' }, (p) =>
    out({ ev: 'change', id: p.new.id }),
  )
  .on('system', {}, (p) => out({ ev: 'system', payload: p }))
  .subscribe((status, err) => out({ ev: 'status', status, error: err?.message ?? null }));

process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
