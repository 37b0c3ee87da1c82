package broker

import (
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
)

func TestCodeName(t *testing.T) {
	for c, want := range map[codes.Code]string{
		codes.OK:                 "OK",
		codes.PermissionDenied:   "PERMISSION_DENIED",
		codes.Unauthenticated:    "UNAUTHENTICATED",
		codes.Unavailable:        "UNAVAILABLE",
		codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
		codes.FailedPrecondition: "FAILED_PRECONDITION",
	} {
		if got := codeName(c); got != want {
			t.Errorf("codeName(%v) = %q, want %q", c, got, want)
		}
	}
}

func TestClip(t *testing.T) {
	cases := []struct {
		name string
		in   string
	}{
		{"short", "a reason"},
		{"ascii", strings.Repeat("x", 3000)},
		{"multibyte", strings.Repeat("é", 1000)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := clip(tc.in)
			if len(got) > maxReason || !utf8.ValidString(got) {
				t.Fatalf("clip: %d bytes, valid UTF-8 %v", len(got), utf8.ValidString(got))
			}
			if len(tc.in) <= maxReason && got != tc.in {
				t.Fatalf("clip changed a short reason: %q", got)
			}
		})
	}
}
