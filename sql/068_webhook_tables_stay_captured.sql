-- A table a webhook endpoint delivers stays captured. `realtime.disable` of it, or its
-- leaving the publication that captured it, used to take its capture triggers off while
-- the endpoint went on "active": its changes were never logged, so never delivered,
-- and nothing said so. Now capture_off leaves such a table captured when nothing else
-- captures it any more (no row of realtime.capture_sources: the last source just went),
-- and says which endpoint keeps it, with a NOTICE. The table then stays captured until
-- it is disabled again once no endpoint delivers it. A capture_off of a table that still
-- has a source (the sync moving a new partition from statement to row triggers, which
-- turns it off and on again) is not held back.

alter function realtime.capture_off(regclass) rename to capture_off_065;

create function realtime.capture_off(tbl regclass) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $fn$
declare
    endpoint text;
begin
    select e.name into endpoint
    from realtime.webhook_endpoints e
    where tbl = any(e.tables)
      and not exists (select 1 from realtime.capture_sources s where s.relid = tbl)
    order by e.name
    limit 1;
    if endpoint is not null then
        raise notice 'switchboard: % stays captured: webhook endpoint % delivers its changes (drop the endpoint or alter its tables first)',
            tbl, endpoint;
        return;
    end if;
    perform realtime.capture_off_065(tbl);
end
$fn$;

revoke all on function realtime.capture_off(regclass) from public;
revoke all on function realtime.capture_off_065(regclass) from public;
