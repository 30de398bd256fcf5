package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// serverURL returns the test server's URL from RIPPLE_TEST_POSTGRES_URL, or
// skips (fails under RIPPLE_TEST_REQUIRE_SERVERS=1) when it is unset.
func serverURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("RIPPLE_TEST_POSTGRES_URL")
	if u == "" {
		if os.Getenv("RIPPLE_TEST_REQUIRE_SERVERS") == "1" {
			t.Fatal("RIPPLE_TEST_POSTGRES_URL is not set but RIPPLE_TEST_REQUIRE_SERVERS=1: start PostgreSQL (scripts/test does) and export RIPPLE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable")
		}
		t.Skip("no PostgreSQL server: set RIPPLE_TEST_POSTGRES_URL=postgres://user@127.0.0.1:5432/db?sslmode=disable to run the postgres transport tests")
	}
	return u
}

// withParam adds a query parameter to a URL.
func withParam(raw, k, v string) string {
	sep := "?"
	if strings.Contains(raw, "?") {
		sep = "&"
	}
	return raw + sep + k + "=" + v
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// freshSchema returns a schema name no test has used, dropped when the
// test ends.
func freshSchema(t testing.TB) string {
	t.Helper()
	base := serverURL(t)
	s := "rt_" + randHex(6)
	t.Cleanup(func() { dropSchema(base, s) })
	return s
}

// schemaURL returns the server URL with a fresh schema.
func schemaURL(t testing.TB) string {
	t.Helper()
	return withParam(serverURL(t), "schema", freshSchema(t))
}

func dropSchema(base, schema string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, base)
	if err != nil {
		return
	}
	defer c.Close(ctx)
	_, _ = c.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
}

// rawConn connects to the test server directly.
func rawConn(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, serverURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}
