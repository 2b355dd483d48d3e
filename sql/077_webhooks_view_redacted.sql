-- `realtime.webhooks` shows a URL's password as `***`, as the admin API, the inspector and
-- `switchboard webhooks list` do (`https://user:***@host/hook`). Before, the view showed
-- it: anyone the owner let read the view could read the credential. Delivery reads the
-- stored URL from realtime.webhook_endpoints, which keeps it. The userinfo is the part of
-- the authority before its last `@`, the user name the part of that before its first `:`.

create or replace view realtime.webhooks as
select e.name,
       pg_catalog.regexp_replace(e.url, '^([a-zA-Z][a-zA-Z0-9+.-]*://)([^/?#:]*):[^/?#]*@', '\1\2:***@') as url,
       array(select pg_catalog.format('%I.%I', n.nspname, c.relname)
               from pg_catalog.unnest(e.tables) with ordinality as t(rel, i)
               join pg_catalog.pg_class c on c.oid = t.rel
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
              order by t.i) as tables,
       e.events, e.filter, e.source,
       case when e.paused then 'paused'
            when e.failures > 0 then 'failing'
            else 'active' end as state,
       e.paused_reason, e.position, e.lease_owner, e.lease_expires_at,
       e.last_success_at, e.last_attempt_at, e.last_error, e.last_error_at, e.last_status,
       e.failures, e.attempts, e.delivered, e.data_lost_at, e.created_at, e.updated_at
from realtime.webhook_endpoints e;
