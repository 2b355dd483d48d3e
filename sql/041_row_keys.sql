-- Row scope at index speed: recognise the SELECT policies that compare one column with
-- one claim of the viewer's JWT, so the hub can index subscribers by that claim's value
-- and find a change's viewers with one lookup instead of judging every subscriber.
--
-- realtime.row_keys(rel, role) returns, when EVERY applicable permissive SELECT policy of
-- the table for that role has one of these shapes (and no restrictive policy applies):
--     <col> = auth.uid()                      (also `auth.uid() = <col>` and
--                                              `<col> = (select auth.uid())`)
--     <col> = (auth.jwt() ->> '<claim>')::uuid | ::bigint | ::integer | ::smallint
--     <col> = (auth.jwt() ->> '<claim>')      (a text column, deterministic collation)
-- a JSON array with one {"column", "claim", "type"} object per policy ("claim" null means
-- auth.uid(), i.e. the `sub` claim as a uuid; "type" is uuid, int2, int4, int8 or text:
-- how both sides compare). A row is visible when any of them holds. Anything else
-- (another shape, a cast that compares differently, non-standard auth functions) returns
-- null and the policies are evaluated in Postgres as before.

create or replace function realtime.row_keys(rel oid, role_name text)
returns jsonb
language plpgsql stable
set search_path = pg_catalog
as $fn$
declare
    viewer_oid oid;
    p record;
    m text[];
    col text;
    claim text;
    want text;
    col_type text;
    deterministic boolean;
    uses_uid boolean := false;
    uses_jwt boolean := false;
    src text;
    keys jsonb := '[]';
    ident constant text := '([a-z_][a-z0-9_]*)';
    uid constant text := '(?:auth\.uid\(\)|\( SELECT auth\.uid\(\) AS uid\))';
    jwt_claim constant text := 'auth\.jwt\(\) ->> ''((?:[^'']|'''')+)''::text';
begin
    select r.oid into viewer_oid from pg_roles r where r.rolname = role_name;
    if not found then
        return null;
    end if;
    for p in
        select pol.polpermissive, pg_get_expr(pol.polqual, pol.polrelid) as qual
          from pg_policy pol
         where pol.polrelid = rel
           and pol.polcmd in ('r', '*')
           and pol.polqual is not null
           and (0::oid = any(pol.polroles)
                or exists (select 1 from unnest(pol.polroles) pr(oid)
                            where pg_has_role(viewer_oid, pr.oid, 'USAGE')))
    loop
        if not p.polpermissive then
            return null;
        end if;
        col := null;
        claim := null;
        m := regexp_match(p.qual, '^\(' || ident || ' = ' || uid || '\)$');
        if m is null then
            m := regexp_match(p.qual, '^\(' || uid || ' = ' || ident || '\)$');
        end if;
        if m is not null then
            col := m[1];
            want := 'uuid';
            uses_uid := true;
        else
            m := regexp_match(p.qual, '^\(' || ident || ' = \(\(' || jwt_claim
                                      || '\)\)::(uuid|bigint|integer|smallint)\)$');
            if m is not null then
                col := m[1];
                claim := replace(m[2], '''''', '''');
                want := case m[3] when 'bigint' then 'int8' when 'integer' then 'int4'
                                  when 'smallint' then 'int2' else 'uuid' end;
            else
                m := regexp_match(p.qual, '^\(' || ident || ' = \(' || jwt_claim || '\)\)$');
                if m is null then
                    return null;
                end if;
                col := m[1];
                claim := replace(m[2], '''''', '''');
                want := 'text';
            end if;
            uses_jwt := true;
        end if;
        select t.typname::text, coalesce(c.collisdeterministic, true)
          into col_type, deterministic
          from pg_attribute a
          join pg_type t on t.oid = a.atttypid
          left join pg_collation c on c.oid = a.attcollation
         where a.attrelid = rel and a.attname = col and a.attnum > 0 and not a.attisdropped;
        if not found then
            return null;
        end if;
        -- Both sides must compare as the in-process key does: uuid with uuid, any integer
        -- width with any other (exact), text with text byte for byte.
        if not (want = 'uuid' and col_type = 'uuid'
                or want in ('int2', 'int4', 'int8') and col_type in ('int2', 'int4', 'int8')
                or want = 'text' and col_type = 'text' and deterministic) then
            return null;
        end if;
        keys := keys || jsonb_build_object('column', col, 'claim', claim, 'type', want);
    end loop;
    if jsonb_array_length(keys) = 0 then
        return null;
    end if;
    -- Only the standard helpers, which read the claims the hub sets.
    if uses_uid then
        select pr.prosrc into src
          from pg_proc pr join pg_namespace n on n.oid = pr.pronamespace
         where n.nspname = 'auth' and pr.proname = 'uid' and pr.pronargs = 0;
        if src is null or position('request.jwt.claim' in src) = 0
           or position('sub' in src) = 0 then
            return null;
        end if;
    end if;
    if uses_jwt then
        src := null;
        select pr.prosrc into src
          from pg_proc pr join pg_namespace n on n.oid = pr.pronamespace
         where n.nspname = 'auth' and pr.proname = 'jwt' and pr.pronargs = 0;
        if src is null or position('request.jwt.claims' in src) = 0 then
            return null;
        end if;
    end if;
    return keys;
end
$fn$;

revoke all on function realtime.row_keys(oid, text) from public;
