-- Row scope decided in the hub only under the standard auth helpers. 041's row_keys
-- took `auth.uid()` / `auth.jwt()` for the standard ones when their source merely
-- mentioned the claims (`request.jwt.claim` and `sub`), so a project's own helper that
-- reads the claims and then changes the answer (a ban list, a membership lookup) passed:
-- the hub then judged the policy by the token's claim and delivered rows Postgres would
-- not show that user. Now the helper's source must be one of the standard texts (the
-- Supabase auth helpers, old and current, and 003's), compared with case and whitespace
-- outside string literals ignored; any other helper leaves the table's policies to
-- Postgres, as any other policy shape does.

-- The words of a SQL text: lower case and without whitespace outside string literals,
-- without a trailing semicolon. Two texts with the same words read the same.
create function realtime.sql_words(src text) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $fn$
    select rtrim(string_agg(
               case when part.n % 2 = 1 then lower(regexp_replace(part.t, '\s+', '', 'g'))
                    else part.t end,
               '''' order by part.n), ';')
      from unnest(string_to_array(src, '''')) with ordinality as part(t, n)
$fn$;

-- Whether auth.<name>() (uid or jwt) is a standard helper: a SQL function whose source
-- is one of the known texts.
create function realtime.standard_auth_helper(name text) returns boolean
language plpgsql stable set search_path = pg_catalog, pg_temp as $fn$
declare
    src text;
    lang name;
begin
    select pr.prosrc, l.lanname into src, lang
      from pg_proc pr
      join pg_namespace n on n.oid = pr.pronamespace
      join pg_language l on l.oid = pr.prolang
     where n.nspname = 'auth' and pr.proname = name and pr.pronargs = 0;
    if src is null or lang <> 'sql' then
        return false;
    end if;
    return realtime.sql_words(src) = any (case name
        when 'uid' then array[
            realtime.sql_words($s$select coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
            )::uuid$s$),
            realtime.sql_words($s$select nullif(current_setting('request.jwt.claim.sub', true), '')::uuid$s$)]
        when 'jwt' then array[
            realtime.sql_words($s$select coalesce(
                nullif(current_setting('request.jwt.claim', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')
            )::jsonb$s$)]
        else array[]::text[] end);
end
$fn$;

alter function realtime.row_keys(oid, text) rename to row_keys_041;

-- As in 041, and only under standard helpers: a key on `auth.uid()` (claim null) needs
-- the standard uid, one on a claim of `auth.jwt()` the standard jwt.
create function realtime.row_keys(rel oid, role_name text) returns jsonb
language plpgsql stable set search_path = pg_catalog, pg_temp as $fn$
declare
    keys jsonb := realtime.row_keys_041(rel, role_name);
begin
    if keys is null then
        return null;
    end if;
    if exists (select 1 from jsonb_array_elements(keys) k where k->>'claim' is null)
       and not realtime.standard_auth_helper('uid') then
        return null;
    end if;
    if exists (select 1 from jsonb_array_elements(keys) k where k->>'claim' is not null)
       and not realtime.standard_auth_helper('jwt') then
        return null;
    end if;
    return keys;
end
$fn$;
revoke all on function realtime.row_keys(oid, text) from public;

-- Whoever could run 041's row_keys (a hub role granted before) can run this one.
do $do$
declare
    g record;
begin
    for g in
        select distinct a.grantee::regrole::text as role
          from pg_proc p, aclexplode(p.proacl) a
         where p.oid = 'realtime.row_keys_041(oid, text)'::regprocedure
           and a.privilege_type = 'EXECUTE' and a.grantee <> 0 and a.grantee <> p.proowner
    loop
        execute format('grant execute on function realtime.row_keys(oid, text) to %s', g.role);
    end loop;
end
$do$;

-- As in 066, and the hub may run 041's row_keys (this one's row_keys calls it).
alter function realtime.grant_hub(text) rename to grant_hub_066;
create function realtime.grant_hub(hub text) returns void
language plpgsql volatile set search_path = pg_catalog, pg_temp as $fn$
begin
    perform realtime.grant_hub_066(hub);
    execute pg_catalog.format(
        'grant execute on function realtime.row_keys_041(oid, text) to %I', hub);
end
$fn$;
revoke all on function realtime.grant_hub(text) from public;
