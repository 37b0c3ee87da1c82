package main

import (
	"testing"

	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func TestQuotaCell(t *testing.T) {
	for _, tc := range []struct {
		q    *pb.Quota
		want string
	}{
		{nil, "-"},
		{&pb.Quota{}, "-"},
		{&pb.Quota{MaxLeasesPerRole: 200, MaxLeasesPerCaller: 5, IssueRatePerCaller: 0.5, IssueBurst: 3}, "per_role=200,per_caller=5,rate=0.5/s,burst=3"},
		{&pb.Quota{MaxLeasesPerCaller: 2}, "per_caller=2"},
	} {
		if got := quotaCell(tc.q); got != tc.want {
			t.Errorf("quotaCell(%v) = %q, want %q", tc.q, got, tc.want)
		}
	}
}
