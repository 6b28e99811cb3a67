-- Migration: 20250101001500_audit_chain_end_lookups.sql
--
-- Finding a chain's last row stays one index probe however many rows one transaction appends.
--
-- Each audit row links to its chain's last row: `... WHERE space_id = $1 ORDER BY id DESC LIMIT 1`
-- (audit_record, audit_append), and at commit audit_move_head asks the same once per row. For the
-- marketplace chain the condition is `space_id IS NULL`, which does not fix the index's order the
-- way `=` does, so the rows of the chain were read and sorted: one statement inserting 10,000
-- routes (bench/run.py) took 47 s, quadratic in its rows. And with the statistics of a table that
-- has not been analyzed yet (a new database, a first bulk change), the planner prefers reading the
-- whole table and sorting even where the index gives the order.
--
-- A partial index gives the marketplace chain its order, and the three functions plan without a
-- sort where an index provides one (enable_sort only weighs the plans: nothing else in them sorts
-- by a plan node). 2,000 routes in one statement, their audit trigger: 1.83 s -> 0.36 s.

CREATE INDEX idx_audit_log_marketplace ON public.audit_log (id) INCLUDE (hash) WHERE space_id IS NULL;

ALTER FUNCTION public.audit_record() SET enable_sort = off;
ALTER FUNCTION public.audit_append(uuid, text, uuid, text, text[], jsonb, jsonb) SET enable_sort = off;
ALTER FUNCTION public.audit_move_head() SET enable_sort = off;
