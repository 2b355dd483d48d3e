-- The names a webhook endpoint's tables had, kept across hub restarts. The log keeps the
-- name a row was written under; the delivering hub learns a table's rename by comparing
-- the names it loaded before (by table oid) with the names now, and then selects rows
-- under both. It kept that only in memory, so a hub started after a rename passed over
-- the rows still waiting under the old name. Now the hub writes what it knows here
-- (fenced by its lease) before it delivers, and a hub taking the endpoint over starts
-- from it. Written only by the hub; null until a hub has loaded the endpoint.
alter table realtime.webhook_endpoints add column if not exists table_names jsonb;
