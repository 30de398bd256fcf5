package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// migrations are the schema's versions, in order: migrations[i] takes the
// schema from version i to version i+1. They are applied under an advisory
// lock, each in its own transaction together with the version bump, so
// processes starting together (of one version or several) migrate once. A
// migration is never edited once released: changes are new entries.
//
// Every time is unix nanoseconds on the database's clock (now_ns), so
// processes on hosts with different clocks agree on leases and delays.
// Delivery states: 0 ready, 1 leased, 2 done, 3 dead.
var migrations = []string{
	`CREATE TABLE @.meta (key text PRIMARY KEY, value bigint NOT NULL);
	INSERT INTO @.meta (key, value) VALUES ('schema_version', 0);

	CREATE FUNCTION @.now_ns() RETURNS bigint LANGUAGE sql STABLE AS
		$$ SELECT (extract(epoch FROM now()) * 1000000)::bigint * 1000 $$;
	-- after_ns is now_ns() + d, saturating at the largest time instead of
	-- overflowing (a delay into the year 2262 or beyond).
	CREATE FUNCTION @.after_ns(d bigint) RETURNS bigint LANGUAGE sql STABLE AS
		$$ SELECT CASE WHEN d > 9223372036854775807 - @.now_ns() THEN 9223372036854775807 ELSE @.now_ns() + greatest(d, 0) END $$;

	CREATE TABLE @.subscriptions (
		id bigserial PRIMARY KEY,
		name text NOT NULL UNIQUE,
		pattern text NOT NULL,
		regex text NOT NULL,
		ordered boolean NOT NULL,
		lease_ns bigint NOT NULL,
		paused boolean NOT NULL DEFAULT false,
		ephemeral boolean NOT NULL DEFAULT false,
		touched_at bigint NOT NULL DEFAULT 0,
		created_at bigint NOT NULL);

	CREATE TABLE @.events (
		seq bigserial PRIMARY KEY,
		source text NOT NULL,
		id text NOT NULL,
		type text NOT NULL,
		key text NOT NULL,
		priority integer NOT NULL,
		time bigint NOT NULL,
		published_at bigint NOT NULL,
		keep_until bigint NOT NULL,
		attrs jsonb,
		data bytea,
		UNIQUE (source, id))
		WITH (autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_insert_scale_factor = 0.05);
	CREATE INDEX events_keep ON @.events (keep_until);
	CREATE INDEX events_published ON @.events (published_at);

	CREATE TABLE @.deliveries (
		sub_id bigint NOT NULL,
		event_seq bigint NOT NULL,
		state smallint NOT NULL,
		run_at bigint NOT NULL,
		priority integer NOT NULL,
		key text NOT NULL,
		delayed boolean NOT NULL DEFAULT false,
		attempts integer NOT NULL DEFAULT 0,
		failures integer NOT NULL DEFAULT 0,
		gen bigint NOT NULL DEFAULT 0,
		lease_until bigint NOT NULL DEFAULT 0,
		first_attempt bigint NOT NULL DEFAULT 0,
		done_at bigint NOT NULL DEFAULT 0,
		last_error text NOT NULL DEFAULT '',
		PRIMARY KEY (sub_id, event_seq))
		WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
	CREATE INDEX deliveries_ready ON @.deliveries (sub_id, priority DESC, event_seq) WHERE state = 0;
	CREATE INDEX deliveries_due ON @.deliveries (sub_id, run_at) WHERE state = 0 AND delayed;
	CREATE INDEX deliveries_leased ON @.deliveries (sub_id, lease_until) WHERE state = 1;
	CREATE INDEX deliveries_key ON @.deliveries (sub_id, key, event_seq) WHERE state IN (0, 1) AND key <> '';
	CREATE INDEX deliveries_done ON @.deliveries (sub_id, done_at) WHERE state = 2;
	CREATE INDEX deliveries_dead ON @.deliveries (sub_id, done_at) WHERE state = 3;
	CREATE INDEX deliveries_event ON @.deliveries (event_seq);

	CREATE TABLE @.claims (
		handler text NOT NULL,
		event_id text NOT NULL,
		done boolean NOT NULL,
		expires_at bigint NOT NULL,
		updated_at bigint NOT NULL,
		PRIMARY KEY (handler, event_id));
	CREATE INDEX claims_updated ON @.claims (updated_at);

	CREATE TABLE @.rate_slots (
		handler text NOT NULL,
		start_ns bigint NOT NULL);
	CREATE INDEX rate_slots_handler ON @.rate_slots (handler, start_ns);

	-- lease leases up to p_max deliveries of subscription p_sub for p_lease
	-- nanoseconds: first expired leases, then ready rows by priority and
	-- publish order. Rows locked by another lessor are skipped, so lessors
	-- in many processes never wait for each other. For an ordered
	-- subscription a row is held back by an earlier unsettled row of its
	-- key or by a leased one, and lessors of the subscription take turns
	-- (a transaction-level advisory lock), so two cannot lease two rows of
	-- one key at once.
	CREATE FUNCTION @.lease(p_sub bigint, p_max integer, p_lease bigint)
	RETURNS TABLE (o_seq bigint, o_attempts integer, o_gen bigint, o_first bigint,
		o_id text, o_type text, o_key text, o_priority integer, o_time bigint, o_attrs jsonb, o_data bytea)
	LANGUAGE plpgsql AS $$
	#variable_conflict use_column
	DECLARE
		v_now bigint := @.now_ns();
		v_ordered boolean;
		v_paused boolean;
		v_ephemeral boolean;
		v_touched bigint;
		v_n integer;
		v_m integer;
	BEGIN
		-- A lease lost to a server crash only makes its rows deliverable
		-- again, which at-least-once delivery allows: no WAL flush wait.
		PERFORM set_config('synchronous_commit', 'off', true);
		SELECT s.ordered, s.paused, s.ephemeral, s.touched_at INTO v_ordered, v_paused, v_ephemeral, v_touched
			FROM @.subscriptions s WHERE s.id = p_sub;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'subscription % no longer exists', p_sub USING ERRCODE = 'P0002';
		END IF;
		IF v_ephemeral AND v_touched < v_now - 1000000000 THEN
			UPDATE @.subscriptions SET touched_at = v_now WHERE id = p_sub;
		END IF;
		IF v_paused THEN
			RETURN;
		END IF;
		IF v_ordered THEN
			PERFORM pg_advisory_xact_lock(@LOCK, p_sub::integer);
		END IF;
		RETURN QUERY
		UPDATE @.deliveries d SET state = 1, lease_until = @.after_ns(p_lease), gen = d.gen + 1, attempts = d.attempts + 1,
			first_attempt = CASE WHEN d.first_attempt = 0 THEN v_now ELSE d.first_attempt END
		FROM @.events e
		WHERE e.seq = d.event_seq AND d.sub_id = p_sub AND d.state = 1 AND d.lease_until < v_now
			AND d.event_seq IN (SELECT x.event_seq FROM @.deliveries x WHERE x.sub_id = p_sub AND x.state = 1 AND x.lease_until < v_now
				ORDER BY x.lease_until LIMIT p_max FOR UPDATE SKIP LOCKED)
		RETURNING d.event_seq, d.attempts, d.gen, d.first_attempt, e.id, e.type, e.key, e.priority, e.time, e.attrs, e.data;
		GET DIAGNOSTICS v_n = ROW_COUNT;
		IF v_n >= p_max THEN
			RETURN;
		END IF;
		IF v_ordered THEN
			RETURN QUERY
			UPDATE @.deliveries d SET state = 1, lease_until = @.after_ns(p_lease), gen = d.gen + 1, attempts = d.attempts + 1,
				first_attempt = CASE WHEN d.first_attempt = 0 THEN v_now ELSE d.first_attempt END
			FROM @.events e
			WHERE e.seq = d.event_seq AND d.sub_id = p_sub AND d.state = 0
				AND d.event_seq IN (SELECT x.event_seq FROM @.deliveries x WHERE x.sub_id = p_sub AND x.state = 0 AND x.run_at <= v_now
					AND (x.key = '' OR NOT EXISTS (SELECT 1 FROM @.deliveries y WHERE y.sub_id = p_sub AND y.key = x.key
						AND y.state IN (0, 1) AND y.key <> '' AND (y.event_seq < x.event_seq OR y.state = 1)))
					ORDER BY x.priority DESC, x.event_seq LIMIT p_max - v_n FOR UPDATE SKIP LOCKED)
			RETURNING d.event_seq, d.attempts, d.gen, d.first_attempt, e.id, e.type, e.key, e.priority, e.time, e.attrs, e.data;
		ELSE
			RETURN QUERY
			UPDATE @.deliveries d SET state = 1, lease_until = @.after_ns(p_lease), gen = d.gen + 1, attempts = d.attempts + 1,
				first_attempt = CASE WHEN d.first_attempt = 0 THEN v_now ELSE d.first_attempt END
			FROM @.events e
			WHERE e.seq = d.event_seq AND d.sub_id = p_sub AND d.state = 0
				AND d.event_seq IN (SELECT x.event_seq FROM @.deliveries x WHERE x.sub_id = p_sub AND x.state = 0 AND x.run_at <= v_now
					ORDER BY x.priority DESC, x.event_seq LIMIT p_max - v_n FOR UPDATE SKIP LOCKED)
			RETURNING d.event_seq, d.attempts, d.gen, d.first_attempt, e.id, e.type, e.key, e.priority, e.time, e.attrs, e.data;
		END IF;
		GET DIAGNOSTICS v_m = ROW_COUNT;
		IF v_n + v_m = 0 THEN
			-- Nothing leased: one row with o_seq -1 tells the caller the
			-- clock (o_gen) and when a row becomes deliverable without a
			-- write (o_first: a delay or backoff running out or a lease
			-- expiring; NULL for never), saving it a second round trip.
			RETURN QUERY SELECT -1::bigint, 0, v_now, least(
				(SELECT min(x.run_at) FROM @.deliveries x WHERE x.sub_id = p_sub AND x.state = 0 AND x.delayed AND x.run_at > v_now),
				(SELECT min(x.lease_until) + 1 FROM @.deliveries x WHERE x.sub_id = p_sub AND x.state = 1)),
				NULL::text, NULL::text, NULL::text, 0, 0::bigint, NULL::jsonb, NULL::bytea;
		END IF;
	END $$;`,

	`-- Version 2: lease, planned for reuse. PL/pgSQL keeps a generic plan
	-- of a statement once that costs no more than planning afresh, and
	-- version 1's joins, whose LIMIT is a parameter, had a generic plan
	-- that read every event (a hash join over a sequential scan), so each
	-- call planned its statements again. Here every lookup is by key: the
	-- rows to lease are picked into an array (locked, skipping rows other
	-- lessors hold), updated through the primary key and joined to their
	-- events one by one, a plan that does not depend on the limit, so the
	-- function keeps its generic plans (plan_cache_mode): planning them at
	-- every call cost as much as running them. A call leasing fewer rows
	-- than asked also says when to look again, which version 1 said only
	-- when it leased nothing.
	CREATE OR REPLACE FUNCTION @.lease(p_sub bigint, p_max integer, p_lease bigint)
	RETURNS TABLE (o_seq bigint, o_attempts integer, o_gen bigint, o_first bigint,
		o_id text, o_type text, o_key text, o_priority integer, o_time bigint, o_attrs jsonb, o_data bytea)
	LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
	#variable_conflict use_column
	DECLARE
		v_now bigint := @.now_ns();
		v_until bigint := @.after_ns(p_lease);
		v_ordered boolean;
		v_paused boolean;
		v_ephemeral boolean;
		v_touched bigint;
		v_seqs bigint[];
		v_n integer := 0;
		v_m integer := 0;
	BEGIN
		-- A lease lost to a server crash only makes its rows deliverable
		-- again, which at-least-once delivery allows: no WAL flush wait.
		PERFORM set_config('synchronous_commit', 'off', true);
		SELECT s.ordered, s.paused, s.ephemeral, s.touched_at INTO v_ordered, v_paused, v_ephemeral, v_touched
			FROM @.subscriptions s WHERE s.id = p_sub;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'subscription % no longer exists', p_sub USING ERRCODE = 'P0002';
		END IF;
		IF v_ephemeral AND v_touched < v_now - 1000000000 THEN
			UPDATE @.subscriptions SET touched_at = v_now WHERE id = p_sub;
		END IF;
		IF v_paused THEN
			RETURN;
		END IF;
		IF v_ordered THEN
			PERFORM pg_advisory_xact_lock(@LOCK, p_sub::integer);
		END IF;
		-- Expired leases first.
		v_seqs := ARRAY(SELECT x.event_seq FROM @.deliveries x WHERE x.sub_id = p_sub AND x.state = 1 AND x.lease_until < v_now
			ORDER BY x.lease_until LIMIT p_max FOR UPDATE SKIP LOCKED);
		IF cardinality(v_seqs) > 0 THEN
			RETURN QUERY
			WITH upd AS (
				UPDATE @.deliveries d SET state = 1, lease_until = v_until, gen = d.gen + 1, attempts = d.attempts + 1,
					first_attempt = CASE WHEN d.first_attempt = 0 THEN v_now ELSE d.first_attempt END
				WHERE d.sub_id = p_sub AND d.event_seq = ANY (v_seqs) AND d.state = 1 AND d.lease_until < v_now
				RETURNING d.event_seq, d.attempts, d.gen, d.first_attempt)
			SELECT u.event_seq, u.attempts, u.gen, u.first_attempt, e.id, e.type, e.key, e.priority, e.time, e.attrs, e.data
			FROM upd u CROSS JOIN LATERAL (SELECT * FROM @.events e WHERE e.seq = u.event_seq OFFSET 0) e;
			GET DIAGNOSTICS v_n = ROW_COUNT;
			IF v_n >= p_max THEN
				RETURN;
			END IF;
		END IF;
		IF v_ordered THEN
			v_seqs := ARRAY(SELECT x.event_seq FROM @.deliveries x WHERE x.sub_id = p_sub AND x.state = 0 AND x.run_at <= v_now
				AND (x.key = '' OR NOT EXISTS (SELECT 1 FROM @.deliveries y WHERE y.sub_id = p_sub AND y.key = x.key
					AND y.state IN (0, 1) AND y.key <> '' AND (y.event_seq < x.event_seq OR y.state = 1)))
				ORDER BY x.priority DESC, x.event_seq LIMIT p_max - v_n FOR UPDATE SKIP LOCKED);
		ELSE
			v_seqs := ARRAY(SELECT x.event_seq FROM @.deliveries x WHERE x.sub_id = p_sub AND x.state = 0 AND x.run_at <= v_now
				ORDER BY x.priority DESC, x.event_seq LIMIT p_max - v_n FOR UPDATE SKIP LOCKED);
		END IF;
		IF cardinality(v_seqs) > 0 THEN
			RETURN QUERY
			WITH upd AS (
				UPDATE @.deliveries d SET state = 1, lease_until = v_until, gen = d.gen + 1, attempts = d.attempts + 1,
					first_attempt = CASE WHEN d.first_attempt = 0 THEN v_now ELSE d.first_attempt END
				WHERE d.sub_id = p_sub AND d.event_seq = ANY (v_seqs) AND d.state = 0
				RETURNING d.event_seq, d.attempts, d.gen, d.first_attempt)
			SELECT u.event_seq, u.attempts, u.gen, u.first_attempt, e.id, e.type, e.key, e.priority, e.time, e.attrs, e.data
			FROM upd u CROSS JOIN LATERAL (SELECT * FROM @.events e WHERE e.seq = u.event_seq OFFSET 0) e;
			GET DIAGNOSTICS v_m = ROW_COUNT;
		END IF;
		IF v_n + v_m < p_max THEN
			-- Fewer rows than asked for: one more row, with o_seq -1,
			-- tells the caller the clock (o_gen) and when a row becomes
			-- deliverable without a write (o_first: a delay or backoff
			-- running out or a lease expiring; NULL for never), so that it
			-- can sleep until then or until a notification instead of
			-- asking again at once.
			RETURN QUERY SELECT -1::bigint, 0, v_now, least(
				(SELECT min(x.run_at) FROM @.deliveries x WHERE x.sub_id = p_sub AND x.state = 0 AND x.delayed AND x.run_at > v_now),
				(SELECT min(x.lease_until) + 1 FROM @.deliveries x WHERE x.sub_id = p_sub AND x.state = 1)),
				NULL::text, NULL::text, NULL::text, 0, 0::bigint, NULL::jsonb, NULL::bytea;
		END IF;
	END $$;`,
}

// schemaVersion is the newest schema version this build knows.
var schemaVersion = len(migrations)

// migrate creates Ripple's schema or brings it up to schemaVersion. It
// refuses a schema that is not Ripple's (tables but no meta table) and one
// written by a newer Ripple, naming both versions.
func (d *driver) migrate(ctx context.Context) error {
	c, err := d.pool.Acquire(ctx)
	if err != nil {
		return d.wrap(fmt.Errorf("connecting: %w", err))
	}
	defer c.Release()
	// The common case, a schema already current, costs two queries and
	// no lock.
	var hasMeta bool
	if err := c.QueryRow(ctx, `SELECT current_database(), to_regclass($1) IS NOT NULL`, d.qschema+".meta").Scan(&d.dbName, &hasMeta); err != nil {
		return d.wrap(err)
	}
	if hasMeta {
		var v int64
		if err := c.QueryRow(ctx, d.q(`SELECT value FROM @.meta WHERE key = 'schema_version'`)).Scan(&v); err == nil && int(v) == schemaVersion {
			return nil
		}
	}
	if _, err := c.Exec(ctx, "SELECT pg_advisory_lock($1, 0)", d.lockKey); err != nil {
		return d.wrap(err)
	}
	defer func() { _, _ = c.Exec(context.Background(), "SELECT pg_advisory_unlock($1, 0)", d.lockKey) }()

	var exists bool
	if err := c.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, d.schema).Scan(&exists); err != nil {
		return d.wrap(err)
	}
	if !exists {
		if _, err := c.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+d.qschema); err != nil {
			return fmt.Errorf("postgres transport: creating schema %s: %w; create it yourself (CREATE SCHEMA %s) or grant this user CREATE on the database", d.schema, err, d.schema)
		}
	}
	version, err := d.readVersion(ctx, c.Conn())
	if err != nil {
		return err
	}
	if version > schemaVersion {
		return fmt.Errorf("postgres transport: schema %q is at version %d, written by a newer Ripple; this build knows versions up to %d: upgrade Ripple to use it", d.schema, version, schemaVersion)
	}
	for v := version; v < schemaVersion; v++ {
		err := pgx.BeginFunc(ctx, c.Conn(), func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, d.q(migrations[v])); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, d.q(`UPDATE @.meta SET value = $1 WHERE key = 'schema_version'`), v+1)
			return err
		})
		if err != nil {
			return fmt.Errorf("postgres transport: migrating schema %q from version %d to %d: %w", d.schema, v, v+1, err)
		}
	}
	return nil
}

// readVersion returns the schema's version: 0 for an empty schema.
func (d *driver) readVersion(ctx context.Context, c *pgx.Conn) (int, error) {
	rows, err := c.Query(ctx, `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v') ORDER BY c.relname`, d.schema)
	if err != nil {
		return 0, d.wrap(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, d.wrap(err)
	}
	if len(tables) == 0 {
		return 0, nil
	}
	hasMeta := false
	for _, t := range tables {
		hasMeta = hasMeta || t == "meta"
	}
	if !hasMeta {
		shown := tables
		if len(shown) > 5 {
			shown = append(shown[:5:5], "…")
		}
		return 0, fmt.Errorf("postgres transport: schema %q holds tables (%s) but is not a Ripple schema (no meta table); Ripple needs a schema of its own: name another with ?schema=", d.schema, strings.Join(shown, ", "))
	}
	var v int64
	err = c.QueryRow(ctx, d.q(`SELECT value FROM @.meta WHERE key = 'schema_version'`)).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("postgres transport: schema %q has a meta table without a schema_version row; it is not a usable Ripple schema: name another with ?schema=", d.schema)
	}
	if err != nil {
		return 0, d.wrap(err)
	}
	return int(v), nil
}
