package broker

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/plugins"
)

// TestToStatusDatabaseErrors: a plugin error becomes a status naming its
// database and the kind of failure, never the server's text.
func TestToStatusDatabaseErrors(t *testing.T) {
	server := errors.New("Access denied for user 'credbroker'@'%' to database 'mysql'")
	cases := []struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{
		{"privilege", inDatabase("shop", plugins.Classify(plugins.Rejected("creation statement 3 rejected", server), plugins.KindAdminPrivilege)),
			codes.FailedPrecondition, `database "shop": the broker's admin user lacks a privilege the operation needs (see the broker's log; docs/config.md lists the admin privileges)`},
		{"login", inDatabase("shop", plugins.Classify(plugins.Wrap(t.Context(), "mysql: connect", server, true), plugins.KindAdminLogin)),
			codes.Unavailable, `database "shop": the server refused the broker's admin login (check the admin user and its password)`},
		{"unreachable", inDatabase("main", plugins.Wrap(t.Context(), "postgres: connect", server, true)),
			codes.Unavailable, `database "main" unavailable`},
		{"rejected", inDatabase("main", plugins.Rejected("creation statement 1 rejected", server)),
			codes.InvalidArgument, `database "main": the role's statements were rejected by the database`},
		{"unnamed", fmt.Errorf("x: %w", plugins.ErrUnavailable), codes.Unavailable, "database unavailable"},
		{"password_env", inDatabase("main", errRotateNeedsFile), codes.FailedPrecondition,
			`database "main": its admin password comes from password_env; rotation needs password_file`},
		{"no database", errNoDatabase, codes.NotFound, "no such database"},
		{"other", inDatabase("main", server), codes.Internal, "internal error"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(toStatus(tc.err))
			if st.Code() != tc.code || st.Message() != tc.msg {
				t.Errorf("toStatus = %v %q, want %v %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}
}
