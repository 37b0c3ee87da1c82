package boltstore

import (
	"slices"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

func TestCodecV2RejectsDamage(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	l := makeLease(t, now, time.Hour, 2*time.Hour)
	l.State, l.LastError, l.Attempts, l.Expired = lease.StateRevoking, "boom", 3, true
	v, err := encodeLease(l)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeLease([]byte(l.ID), v)
	if err != nil {
		t.Fatal(err)
	}
	if want := normalizeTimes(l); !slices.Equal(got.RevocationStatements, want.RevocationStatements) ||
		got.LastError != want.LastError || !got.ExpireTime.Equal(want.ExpireTime) || got.Attempts != 3 || !got.Expired {
		t.Errorf("round trip: got %+v, want %+v", got, want)
	}
	if err := checkRecord([]byte(l.ID), v); err != nil {
		t.Errorf("checkRecord of a good record: %v", err)
	}
	for cut := 1; cut < len(v); cut++ {
		if _, err := decodeLease([]byte(l.ID), v[:cut]); err == nil {
			t.Errorf("decode of the first %d of %d bytes succeeded", cut, len(v))
		}
		if err := checkRecord([]byte(l.ID), v[:cut]); err == nil {
			t.Errorf("checkRecord of the first %d of %d bytes succeeded", cut, len(v))
		}
	}
	if _, err := decodeLease([]byte(l.ID), append(v, 0)); err == nil {
		t.Error("decode with a trailing byte succeeded")
	}
}

func TestTimeCodec(t *testing.T) {
	for _, at := range []time.Time{
		time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.FixedZone("CET", 3600)),
		time.Unix(0, 0),
		{},
	} {
		v := putTime([]byte{codecV2}, utc(at))
		got, err := decodeTime(v)
		if err != nil || !got.Equal(at) {
			t.Errorf("time %v: decoded %v, %v", at, got, err)
		}
		for cut := range len(v) {
			if _, err := decodeTime(v[:cut]); err == nil {
				t.Errorf("time %v: decode of the first %d of %d bytes succeeded", at, cut, len(v))
			}
		}
		if _, err := decodeTime(append(v, 0)); err == nil {
			t.Errorf("time %v: decode with a trailing byte succeeded", at)
		}
	}
}
