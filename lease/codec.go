package lease

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// codecV1 prefixes every stored value so that the encoding can change later
// (to a hand-rolled binary form, say) without guessing what a record is.
const codecV1 byte = 1

// encodeLease serializes l for a Store. Times are stored in UTC with their
// nanoseconds and without monotonic readings, so decodeLease(encodeLease(l))
// equals l field for field when l's times are UTC.
func encodeLease(l Lease) ([]byte, error) {
	l = normalizeTimes(l)
	b, err := json.Marshal(l)
	if err != nil {
		return nil, fmt.Errorf("lease: encode %s: %w", l.ID, err)
	}
	return append([]byte{codecV1}, b...), nil
}

// decodeLease is the inverse of encodeLease.
func decodeLease(b []byte) (Lease, error) {
	if len(b) == 0 {
		return Lease{}, errors.New("lease: decode: empty record")
	}
	if b[0] != codecV1 {
		return Lease{}, fmt.Errorf("lease: decode: unknown record version %d", b[0])
	}
	var l Lease
	if err := json.Unmarshal(b[1:], &l); err != nil {
		return Lease{}, fmt.Errorf("lease: decode: %w", err)
	}
	return l, nil
}

// normalizeTimes puts every time of l in UTC and strips monotonic readings.
func normalizeTimes(l Lease) Lease {
	l.IssueTime = utc(l.IssueTime)
	l.ExpireTime = utc(l.ExpireTime)
	l.MaxExpireTime = utc(l.MaxExpireTime)
	return l
}

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.Round(0).UTC()
}
