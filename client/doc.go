/*
Package client is the Go client of credbroker: it gets database
credentials from a broker over mTLS with the workload's X.509-SVID.

	c, err := client.New(ctx, "credbroker.internal:8443",
		client.WithServerID("spiffe://example.org/credbroker"),
		client.WithWorkloadAPI("")) // or WithFiles(cert, key, bundle), WithSource(src)
	...
	defer c.Close()

# One credential

Client.Credential issues one credential (IssueCredential); nothing renews
it, and Client.Revoke ends it early.

# A credential kept fresh

Client.Watch opens a WatchCredential stream: the broker renews the lease
while the stream lives and sends the next credential before the lease's
max expiry, with an overlap in which both work (docs/watch.md). The
Watcher reconnects with backoff and jitter when the stream breaks (and is
issued a new credential); a revocation (ErrRevoked) or a refusal
(ErrDenied) stops it. Watcher.Close revokes every lease it holds.

Connection pools follow a Watcher: Watcher.PgxPoolConfig (or
ConfigurePgxPool) for pgx, Watcher.MySQLConnector for database/sql with
go-sql-driver/mysql. New connections log in with the current credential,
and connections of a replaced credential are closed instead of reused, so
a query loop sees no failure across rotations.

A Credential's String, GoString and LogValue leave out the password and
DSN; nothing in this package logs either.
*/
package client
