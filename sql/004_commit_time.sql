-- One commit_timestamp per transaction: with track_commit_timestamp = on it is the real
-- commit time; otherwise every row of a transaction carries the transaction's start time
-- (now()), so all changes of one transaction share a timestamp.
alter table realtime.changes alter column created_at set default now();

create or replace function realtime.commit_time(x xid8, fallback timestamptz)
returns timestamptz
language sql stable
set search_path = ''
as $$
    select case
        when pg_catalog.current_setting('track_commit_timestamp') = 'on'
        then coalesce(pg_catalog.pg_xact_commit_timestamp(pg_catalog.xid(x)), fallback)
        else fallback
    end
$$;
