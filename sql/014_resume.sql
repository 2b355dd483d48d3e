-- Resumable subscriptions (kind 'resume' in realtime.log_holds): one row per channel of a
-- connection that opted in with `resume=<key>`. `snapshot` is the cursor of the channel's
-- acknowledged position, so the row also holds the log for it; `detail` says which
-- channel it is and the exact position:
--   {"key", "topic", "private", "bindings", "position", "parked", "owner", "node"}.
-- A live row is checkpointed about once a second; a parked row waits for its client until
-- `expires_at`. Only the row's owner (the channel that last took it) may write it.
alter table realtime.log_holds add column if not exists detail jsonb;
