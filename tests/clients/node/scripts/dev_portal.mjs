// Used by tests/real_clients.rs (`switchboard dev` test): a supabase-js portal client that
// subscribes to `jobs` with a customer token and prints each change as one JSON line.
// Env: SB_URL (http://host:port), SB_ANON, SB_TOKEN.
import { createClient } from '@supabase/supabase-js';
import WebSocket from 'ws';

const supabase = createClient(process.env.SB_URL, process.env.SB_ANON, {
  accessToken: async () => process.env.SB_TOKEN,
  realtime: { transport: WebSocket },
});
await supabase.realtime.setAuth();
supabase
  .channel('portal')
  .on('postgres_changes', { event: '*', schema: 'public', table: 'jobs' }, (p) => {
    console.log(JSON.stringify({ change: p }));
  })
  .subscribe((status, err) => {
    console.log(JSON.stringify({ status, error: err?.message ?? null }));
  });
setTimeout(() => process.exit(3), 60_000);
