-- The publication sync held its lock until the end of the transaction it ran in. Since
-- 059 that is any role's DDL transaction (the event trigger runs it), so one long
-- migration that touched a table kept every other session's DDL, and the hub's own
-- periodic sync, from starting capture of the tables they added to the publication until
-- it committed: rows written to them meanwhile were never logged. The lock is now held
-- only while the sync runs. Two syncs can then overlap with the first one's changes not
-- yet committed: the second waits at most lock_timeout for a table the first is
-- capturing, warns, and leaves it to the first (or to the next sync, if the first rolls
-- back), and carries on with the others.
--
-- As in 058 otherwise.

-- Whether this session holds the sync's lock (key 8314037285011469678, which pg_locks
-- shows as classid 1935762652, objid 1853240686, objsubid 1).
create or replace function realtime.holds_sync_lock() returns boolean
language sql volatile set search_path = pg_catalog, pg_temp as $fn$
    select exists (select 1 from pg_catalog.pg_locks l
                   where l.locktype = 'advisory' and l.pid = pg_catalog.pg_backend_pid()
                     and l.classid = 1935762652 and l.objid = 1853240686 and l.objsubid = 1
                     and l.granted)
$fn$;

revoke all on function realtime.holds_sync_lock() from public;

create or replace function realtime.sync_publication() returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp set lock_timeout = '500ms'
as $fn$
declare
    changed integer := 0;
    r record;
    p oid;
    deadline timestamptz;
begin
    -- A sync never runs inside another, so a lock this session holds now was left by one
    -- that failed where nothing could release it: release it.
    while realtime.holds_sync_lock() loop
        perform pg_catalog.pg_advisory_unlock(8314037285011469678);
    end loop;
    if not exists (select 1 from realtime.publication_drift())
       and not exists (select 1 from realtime.capture_sources s
                       where not exists (select 1 from pg_catalog.pg_class c
                                         where c.oid = s.relid and c.relkind in ('r', 'p')))
       and not exists (select 1 from realtime.partitions_on_statements()) then
        return 0;
    end if;
    -- One reconcile at a time per database, for as long as it runs: a session lock,
    -- released on every way out. Taken without ever waiting in the lock manager (a wait
    -- that ends in an error, lock_timeout or a cancel, can have been granted all the
    -- same, and a session lock outlives the error): tried every 5 ms for up to 500 ms.
    deadline := pg_catalog.clock_timestamp() + interval '500 ms';
    begin
        while not pg_catalog.pg_try_advisory_lock(8314037285011469678) loop
            if pg_catalog.clock_timestamp() >= deadline then
                return -1;
            end if;
            perform pg_catalog.pg_sleep(0.005);
        end loop;
        delete from realtime.capture_sources s
        where not exists (select 1 from pg_catalog.pg_class c
                          where c.oid = s.relid and c.relkind in ('r', 'p'));
        for r in select d.relid, d.adding from realtime.publication_drift() d loop
            begin
                if r.adding then
                    insert into realtime.capture_sources (relid, via) values (r.relid, 'publication');
                    perform realtime.capture_on(r.relid::regclass);
                else
                    delete from realtime.capture_sources where relid = r.relid and via = 'publication';
                    if not exists (select 1 from realtime.capture_sources where relid = r.relid) then
                        perform realtime.capture_off(r.relid::regclass);
                    end if;
                end if;
                changed := changed + 1;
            exception when others then
                raise warning 'switchboard: could not % capture of % (publication supabase_realtime): %',
                    case when r.adding then 'start' else 'stop' end, r.relid::regclass, sqlerrm;
            end;
        end loop;
        for p in select realtime.partitions_on_statements() loop
            begin
                -- Both in this transaction: no write sees the partition without capture.
                perform realtime.capture_off(p::regclass);
                perform realtime.capture_on(p::regclass);
                changed := changed + 1;
            exception when others then
                raise warning 'switchboard: could not capture partition % row by row: %',
                    p::regclass, sqlerrm;
            end;
        end loop;
    exception when others or query_canceled then
        if realtime.holds_sync_lock() then
            perform pg_catalog.pg_advisory_unlock(8314037285011469678);
        end if;
        raise;
    end;
    perform pg_catalog.pg_advisory_unlock(8314037285011469678);
    return changed;
end
$fn$;
