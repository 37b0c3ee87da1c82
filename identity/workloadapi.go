package identity

import (
	"context"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

var _ Source = (*workloadapi.X509Source)(nil)

// NewWorkloadAPISource connects to the SPIFFE Workload API (a SPIRE agent) at
// socketAddr ("unix:///run/spire/agent.sock" or "tcp://host:port"; the
// SPIFFE_ENDPOINT_SOCKET environment variable when empty) and blocks until the
// first SVID and bundle arrive or ctx ends. The source follows rotations on
// its own until closed; the caller must Close it.
func NewWorkloadAPISource(ctx context.Context, socketAddr string) (*workloadapi.X509Source, error) {
	var opts []workloadapi.X509SourceOption
	if socketAddr != "" {
		opts = append(opts, workloadapi.WithClientOptions(workloadapi.WithAddr(socketAddr)))
	}
	src, err := workloadapi.NewX509Source(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("identity: workload api source %q: %w", socketAddr, err)
	}
	return src, nil
}
