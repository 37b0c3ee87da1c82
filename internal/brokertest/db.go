package brokertest

import (
	"context"
	"database/sql"
	"errors"
	"net"
	"testing"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/internal/testenv"
)

// Postgres connects to the test PostgreSQL cluster as its admin, for setup
// and checks, and closes the connection when the test ends. The config
// holds the admin password: never log it.
func Postgres(t testing.TB) (*pgx.ConnConfig, *pgx.Conn) {
	t.Helper()
	cfg, err := pgx.ParseConfig(testenv.PostgresDSN(t))
	if err != nil {
		t.Fatal("parse the test PostgreSQL DSN") // the error may quote the password
	}
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("connect to PostgreSQL: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return cfg, conn
}

// PostgresUsers lists the roles named prefix_..., the users a broker with
// that username_prefix made.
func PostgresUsers(t testing.TB, conn *pgx.Conn, prefix string) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT rolname FROM pg_roles WHERE rolname LIKE $1 ORDER BY 1", prefix+"\\_%")
	if err != nil {
		t.Fatalf("list users: %v", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("list users: %v", err)
	}
	return names
}

// PostgresUserExists reports whether role name exists.
func PostgresUserExists(t testing.TB, conn *pgx.Conn, name string) bool {
	t.Helper()
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_roles WHERE rolname = $1", name).Scan(&n); err != nil {
		t.Fatalf("user exists: %v", err)
	}
	return n == 1
}

// MySQL is an admin connection to a MariaDB server.
type MySQL struct {
	// Config is the parsed admin DSN. It holds the password: never log it.
	Config *mysql.Config
	DB     *sql.DB
	// Host and Port are Config.Addr split, for a broker's config.
	Host, Port string
}

// OpenMySQL opens an admin connection to the MariaDB server at dsn (in
// go-sql-driver format) and closes it when the test ends.
func OpenMySQL(t testing.TB, dsn string) *MySQL {
	t.Helper()
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal("parse the test MariaDB DSN") // the error may quote the password
	}
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	host, port, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		t.Fatal(err)
	}
	return &MySQL{Config: cfg, DB: db, Host: host, Port: port}
}

// MySQLUsers lists the accounts named prefix_..., the users a broker with
// that username_prefix made, each name once.
func MySQLUsers(t testing.TB, db *sql.DB, prefix string) []string {
	t.Helper()
	rows, err := db.Query("SELECT DISTINCT User FROM mysql.user WHERE LEFT(User, ?) = ? ORDER BY 1", len(prefix)+1, prefix+"_")
	if err != nil {
		t.Fatalf("list MariaDB users: %v", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// MySQLUserHost returns the host of account name, and false if there is
// none.
func MySQLUserHost(t testing.TB, db *sql.DB, name string) (string, bool) {
	t.Helper()
	var host string
	err := db.QueryRow("SELECT Host FROM mysql.user WHERE User = ?", name).Scan(&host)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false
	}
	if err != nil {
		t.Fatalf("user exists: %v", err)
	}
	return host, true
}
