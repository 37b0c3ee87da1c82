package postgres

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"

	"github.com/credbroker/credbroker/plugins"
)

// Factory is the postgres engine for plugins.Catalog (type "postgres").
type Factory struct{}

var _ plugins.Factory = Factory{}

// optScramIterations is the one postgres-only config key (Config.ScramIterations).
const optScramIterations = "scram_iterations"

// Type implements plugins.Factory.
func (Factory) Type() string { return "postgres" }

// OptionKeys implements plugins.Factory.
func (Factory) OptionKeys() []string { return []string{optScramIterations} }

// CheckOptions implements plugins.Factory.
func (Factory) CheckOptions(opts map[string]any) error {
	_, err := scramIterations(opts)
	return err
}

// scramIterations reads scram_iterations; 0 (absent) means the default.
func scramIterations(opts map[string]any) (int, error) {
	n, err := plugins.OptionInt(opts, optScramIterations)
	if err != nil {
		return 0, err
	}
	if n < 0 || n > MaxScramIterations {
		return 0, &plugins.OptionError{Key: optScramIterations, Msg: fmt.Sprintf("must be between 1 and %d", MaxScramIterations)}
	}
	return n, nil
}

// CheckStatements implements plugins.Factory: PostgreSQL needs nothing
// beyond the placeholder checks every engine gets.
func (Factory) CheckStatements([]string) error { return nil }

// Open implements plugins.Factory. It does not contact the server.
func (Factory) Open(ctx context.Context, s plugins.Settings) (plugins.Database, error) {
	iters, err := scramIterations(s.Options)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	return New(ctx, Config{
		Host:            s.Host,
		Port:            s.Port,
		Database:        s.Database,
		Username:        s.Username,
		Password:        s.Password,
		SSLMode:         s.SSLMode,
		MaxConns:        int32(s.MaxConns),
		ConnectTimeout:  s.ConnectTimeout,
		Prefix:          s.UsernamePrefix,
		Marker:          s.Marker,
		ScramIterations: iters,
		Lazy:            true,
	})
}

// ClientDSN implements plugins.Factory: a postgres:// URL with the sslmode,
// which libpq and pgx both read.
func (Factory) ClientDSN(e plugins.Endpoint, username, password string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(username, password),
		Host:     net.JoinHostPort(e.Host, strconv.Itoa(e.Port)),
		Path:     "/" + e.Database,
		RawQuery: url.Values{"sslmode": {e.SSLMode}}.Encode(),
	}
	return u.String()
}
