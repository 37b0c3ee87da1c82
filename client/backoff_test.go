package client

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestBackoff(t *testing.T) {
	base, maxD := 250*time.Millisecond, 30*time.Second
	for _, tc := range []struct {
		attempt int
		full    time.Duration
	}{
		{0, 250 * time.Millisecond},
		{1, 500 * time.Millisecond},
		{4, 4 * time.Second},
		{7, 30 * time.Second}, // 32s capped
		{100, 30 * time.Second},
	} {
		for range 50 {
			d := backoff(tc.attempt, base, maxD)
			if d < tc.full/2 || d > tc.full {
				t.Fatalf("backoff(%d) = %s, want within [%s, %s]", tc.attempt, d, tc.full/2, tc.full)
			}
		}
	}
}

func TestTerminal(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{status.Error(codes.Aborted, "revoked"), true},
		{status.Error(codes.PermissionDenied, "deregistered"), true},
		{status.Error(codes.NotFound, "no such role"), true},
		{status.Error(codes.InvalidArgument, "bad ttl"), true},
		{status.Error(codes.Unavailable, "shutting down"), false},
		{status.Error(codes.Internal, "internal error"), false},
		{status.Error(codes.DeadlineExceeded, "deadline"), false},
		{errors.New("connection reset"), false},
	} {
		if got := terminal(tc.err); got != tc.want {
			t.Errorf("terminal(%v) = %t, want %t", tc.err, got, tc.want)
		}
	}
}
