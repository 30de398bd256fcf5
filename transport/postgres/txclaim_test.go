package postgres

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/ripplehq/ripple/transport"
)

// CompleteTx marks a claim done once; a transaction on a database without
// the schema, or on one whose schema of the same name is another Ripple's,
// is refused and writes nothing.
func TestCompleteTxClaimsOnceAndRefusesForeignTx(t *testing.T) {
	schema := freshSchema(t)
	d := openDriver(t, withParam(serverURL(t), "schema", schema))
	pool := openPool(t)

	mark := func(tx pgx.Tx) error { return d.CompleteTx(bg, tx, "h", "e1") }
	if err := pgx.BeginFunc(bg, pool, mark); err != nil {
		t.Fatalf("first CompleteTx: %v", err)
	}
	if err := pgx.BeginFunc(bg, pool, mark); !errors.Is(err, transport.ErrAlreadyDone) {
		t.Fatalf("second CompleteTx = %v; want ErrAlreadyDone", err)
	}

	other := "rt_other_" + randHex(4)
	if _, err := pool.Exec(bg, "CREATE DATABASE "+other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP DATABASE IF EXISTS "+other+" WITH (FORCE)") })
	cfg, err := pgx.ParseConfig(serverURL(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database = other
	c, err := pgx.ConnectConfig(bg, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(bg)
	refused := func(what string) {
		t.Helper()
		tx, err := c.Begin(bg)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(bg) }()
		err = d.CompleteTx(bg, tx, "h", "e2")
		if err == nil || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), "bus's database") {
			t.Fatalf("CompleteTx with a tx on database %s (%s) = %v; want a refusal naming it", other, what, err)
		}
	}
	refused("no Ripple schema")

	// The other database gets a Ripple schema of the same name: the
	// statement finds its tables but must write nothing there.
	u, err := url.Parse(serverURL(t))
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + other
	od := openDriver(t, withParam(u.String(), "schema", schema))
	refused("a schema of the same name")
	var n int
	if err := od.pool.QueryRow(bg, od.q(`SELECT count(*) FROM @.claims`)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("a refused CompleteTx wrote %d claims in the other database", n)
	}
}
