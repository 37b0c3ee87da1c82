package broker

import (
	"encoding/base64"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// durationArg reads an optional duration argument: nil is 0, anything else
// must be valid and positive.
func durationArg(name string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, invalidArg(name + " is not a valid duration")
	}
	v := d.AsDuration()
	if v <= 0 {
		return 0, invalidArg(name + " must be positive")
	}
	return v, nil
}

// pageToken is the token of the page that follows the lease with id last.
// Pages are in id order, so a token stays valid while leases come and go.
func pageToken(last string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(last))
}

// pageTokenArg reads a page token: the id of the lease the page follows,
// "" for the first page.
func pageTokenArg(t string) (after string, err error) {
	if t == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(t)
	if err != nil || !lease.ValidID(string(b)) {
		return "", invalidArg("page_token is malformed")
	}
	return string(b), nil
}

func toPB(l lease.Lease) *pb.Lease {
	st := pb.Lease_STATE_UNSPECIFIED
	switch l.State {
	case lease.StateCreating:
		st = pb.Lease_CREATING
	case lease.StateActive:
		st = pb.Lease_ACTIVE
	case lease.StateRevoking:
		st = pb.Lease_REVOKING
	case lease.StateRevoked:
		st = pb.Lease_REVOKED
		if l.Expired {
			st = pb.Lease_EXPIRED
		}
	case lease.StateExpired:
		st = pb.Lease_EXPIRED
	}
	return &pb.Lease{
		Id:            l.ID,
		Role:          l.Role,
		SpiffeId:      l.Owner,
		Username:      l.Username,
		Database:      l.Database,
		IssueTime:     timestamppb.New(l.IssueTime),
		ExpireTime:    timestamppb.New(l.ExpireTime),
		MaxExpireTime: timestamppb.New(l.MaxExpireTime),
		State:         st,
		LastError:     l.LastError,
	}
}

func toPBs(ls []lease.Lease) []*pb.Lease {
	out := make([]*pb.Lease, len(ls))
	for i, l := range ls {
		out[i] = toPB(l)
	}
	return out
}
