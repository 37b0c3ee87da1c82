package client

import (
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Credential is a database login the broker issued, with its lease. Its
// String, GoString and LogValue leave the password and DSN out, so that
// printing or logging one does not leak it.
type Credential struct {
	LeaseID  string
	Role     string
	Username string
	Password string
	// Database is the broker's name for the database; DBName the
	// database (schema) on the server.
	Database string
	DBName   string
	Host     string
	Port     int
	// DSN is ready for the driver: a libpq URL for PostgreSQL, a
	// go-sql-driver DSN for MySQL and MariaDB. It holds the password.
	DSN string
	// ExpireTime is when the lease ends unless renewed; MaxExpireTime when
	// it ends at the latest.
	ExpireTime    time.Time
	MaxExpireTime time.Time
}

func credentialOf(l *pb.Lease, c *pb.Credential) *Credential {
	return &Credential{
		LeaseID:       l.GetId(),
		Role:          l.GetRole(),
		Username:      c.GetUsername(),
		Password:      c.GetPassword(),
		Database:      c.GetDatabase(),
		DBName:        c.GetDbName(),
		Host:          c.GetHost(),
		Port:          int(c.GetPort()),
		DSN:           c.GetDsn(),
		ExpireTime:    l.GetExpireTime().AsTime(),
		MaxExpireTime: l.GetMaxExpireTime().AsTime(),
	}
}

// String describes the credential without its secrets.
func (c *Credential) String() string {
	if c == nil {
		return "<nil credential>"
	}
	return fmt.Sprintf("credential{lease %s, role %s, user %s on %s (%s:%d), expires %s}",
		c.LeaseID, c.Role, c.Username, c.Database, c.Host, c.Port, c.ExpireTime.UTC().Format(time.RFC3339))
}

// GoString is String, so that %#v does not print the password either.
func (c *Credential) GoString() string { return c.String() }

// LogValue implements slog.LogValuer without the secrets.
func (c *Credential) LogValue() slog.Value {
	if c == nil {
		return slog.StringValue("<nil>")
	}
	return slog.GroupValue(
		slog.String("lease_id", c.LeaseID),
		slog.String("role", c.Role),
		slog.String("username", c.Username),
		slog.String("database", c.Database),
		slog.Time("expire_time", c.ExpireTime),
	)
}

// withLease is c with the times of l (a renewal).
func (c *Credential) withLease(l *pb.Lease) *Credential {
	n := *c
	n.ExpireTime = l.GetExpireTime().AsTime()
	n.MaxExpireTime = l.GetMaxExpireTime().AsTime()
	return &n
}

func isNotFound(err error) bool { return status.Code(err) == codes.NotFound }
