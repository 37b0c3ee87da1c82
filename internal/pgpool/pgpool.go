// Package pgpool builds pgx pool configurations from typed settings, for
// every PostgreSQL client of the broker (plugins/postgres, lease/pgstore),
// so that the one rule that matters is written once: the password is set
// on the parsed configuration and never written into a connection string,
// so no parse or connect error can quote it.
package pgpool

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Settings is one PostgreSQL connection.
type Settings struct {
	Host     string
	Port     int
	Database string // empty: the server's default (the user's name)
	Username string
	Password string
	// SSLMode is a libpq sslmode; empty means pgx's default (prefer).
	SSLMode string
	// ApplicationName shows in pg_stat_activity.
	ApplicationName string
	// MaxConns bounds the pool; 0 keeps pgx's default.
	MaxConns int32
	// ConnectTimeout bounds each new connection; 0 keeps pgx's default.
	ConnectTimeout time.Duration
}

// Config returns the pool configuration of s. Its error never contains
// the password.
func Config(s Settings) (*pgxpool.Config, error) {
	kv := []string{
		"host=" + quote(s.Host),
		"port=" + strconv.Itoa(s.Port),
		"user=" + quote(s.Username),
	}
	if s.ApplicationName != "" {
		kv = append(kv, "application_name="+quote(s.ApplicationName))
	}
	if s.Database != "" {
		kv = append(kv, "dbname="+quote(s.Database))
	}
	if s.SSLMode != "" {
		kv = append(kv, "sslmode="+quote(s.SSLMode))
	}
	pc, err := pgxpool.ParseConfig(strings.Join(kv, " "))
	if err != nil {
		return nil, fmt.Errorf("connection settings: %s", Redact(err.Error(), s.Password))
	}
	pc.ConnConfig.Password = s.Password
	if s.ConnectTimeout > 0 {
		pc.ConnConfig.ConnectTimeout = s.ConnectTimeout
	}
	if s.MaxConns > 0 {
		pc.MaxConns = s.MaxConns
	}
	return pc, nil
}

// quote quotes a value for a libpq key/value connection string.
func quote(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	return "'" + strings.ReplaceAll(s, "'", `\'`) + "'"
}

// Redact replaces every occurrence of secret in msg: a belt to the braces
// of never putting the password where pgx could quote it.
func Redact(msg, secret string) string {
	if secret == "" {
		return msg
	}
	return strings.ReplaceAll(msg, secret, "[redacted]")
}
