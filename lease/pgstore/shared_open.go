package pgstore

import "context"

// OpenShared is Open without the single-writer lock: several stores, one
// per replica, on one schema (the multi-replica mode of issue 10).
func OpenShared(ctx context.Context, c Config, opts ...Option) (*Store, error) {
	s, err := open(ctx, c, false)
	if err != nil {
		return nil, err
	}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}
