package plugins

import (
	"context"
	"time"
)

// Sleep waits d, or until ctx ends, whose error it then returns.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Polling of a server's session list while a user's sessions exit.
const (
	pollFirst = 5 * time.Millisecond
	pollMax   = 100 * time.Millisecond
)

// UntilNone calls round until it reports that nothing is left, waiting
// between rounds from 5 ms doubling to 100 ms. The plugins end a user's
// sessions with it: each round signals the sessions it sees and returns how
// many it saw; they are gone once a round sees none.
func UntilNone(ctx context.Context, round func(context.Context) (int, error)) error {
	delay := pollFirst
	for {
		left, err := round(ctx)
		if err != nil || left == 0 {
			return err
		}
		if err := Sleep(ctx, delay); err != nil {
			return err
		}
		delay = min(2*delay, pollMax)
	}
}
