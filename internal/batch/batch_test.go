package batch

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// gate is a Run that records its batches and blocks each until released.
type gate struct {
	mu      sync.Mutex
	batches [][]int
	started chan []int    // each batch, as it starts
	release chan struct{} // one receive per batch
}

func newGate() *gate {
	return &gate{started: make(chan []int, 100), release: make(chan struct{})}
}

func (g *gate) run(_ context.Context, items []int) []int {
	g.mu.Lock()
	g.batches = append(g.batches, slices.Clone(items))
	g.mu.Unlock()
	g.started <- slices.Clone(items)
	<-g.release
	out := make([]int, len(items))
	for i, v := range items {
		out[i] = v * 10
	}
	return out
}

type outcome struct {
	item, res int
	err       error
}

func do(q *Queue[int, int], ctx context.Context, item int, out chan<- outcome) {
	r, err := q.Do(ctx, item)
	out <- outcome{item, r, err}
}

// waitQueued waits until n calls are queued behind the running batch.
func waitQueued(t *testing.T, q *Queue[int, int], n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		q.mu.Lock()
		got := len(q.pending)
		q.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls queued, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestLoneCallRunsAtOnce(t *testing.T) {
	var calls [][]int
	q := New(func(_ context.Context, items []int) []int {
		calls = append(calls, slices.Clone(items))
		return []int{items[0] + 1}
	}, Options{})
	for i := range 3 {
		r, err := q.Do(context.Background(), i)
		if err != nil || r != i+1 {
			t.Fatalf("Do(%d) = %d, %v", i, r, err)
		}
	}
	if want := [][]int{{0}, {1}, {2}}; !slices.EqualFunc(calls, want, slices.Equal) {
		t.Errorf("batches = %v, want %v", calls, want)
	}
}

// Calls that arrive during a batch run together in the next one, in
// arrival order, led by the first of them; each gets its own result.
func TestOrderingAndHandOff(t *testing.T) {
	g := newGate()
	q := New(g.run, Options{})
	out := make(chan outcome, 10)
	ctx := context.Background()
	go do(q, ctx, 1, out)
	if b := <-g.started; !slices.Equal(b, []int{1}) {
		t.Fatalf("first batch %v", b)
	}
	for i := 2; i <= 5; i++ {
		go do(q, ctx, i, out)
		waitQueued(t, q, i-1)
	}
	g.release <- struct{}{}
	if b := <-g.started; !slices.Equal(b, []int{2, 3, 4, 5}) {
		t.Fatalf("second batch %v, want [2 3 4 5]", b)
	}
	g.release <- struct{}{}
	for range 5 {
		o := <-out
		if o.err != nil || o.res != o.item*10 {
			t.Errorf("item %d: %d, %v", o.item, o.res, o.err)
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.busy || len(q.pending) != 0 {
		t.Errorf("queue not idle: busy %v, %d pending", q.busy, len(q.pending))
	}
}

func TestMaxBoundsABatch(t *testing.T) {
	g := newGate()
	q := New(g.run, Options{Max: 2})
	out := make(chan outcome, 10)
	ctx := context.Background()
	go do(q, ctx, 1, out)
	<-g.started
	for i := 2; i <= 6; i++ {
		go do(q, ctx, i, out)
		waitQueued(t, q, i-1)
	}
	g.release <- struct{}{}
	for _, want := range [][]int{{2, 3}, {4, 5}, {6}} {
		if b := <-g.started; !slices.Equal(b, want) {
			t.Fatalf("batch %v, want %v", b, want)
		}
		g.release <- struct{}{}
	}
	for range 6 {
		if o := <-out; o.err != nil || o.res != o.item*10 {
			t.Errorf("item %d: %d, %v", o.item, o.res, o.err)
		}
	}
}

// A queued caller whose ctx ends leaves the queue: its item runs in no
// batch, and the others are not held up by it.
func TestAbandonWhileQueued(t *testing.T) {
	g := newGate()
	q := New(g.run, Options{})
	out := make(chan outcome, 10)
	bg := context.Background()
	go do(q, bg, 1, out)
	<-g.started
	ctx, cancel := context.WithCancel(bg)
	go do(q, ctx, 2, out) // would lead the next batch
	waitQueued(t, q, 1)
	go do(q, bg, 3, out)
	waitQueued(t, q, 2)
	cancel()
	if o := <-out; o.item != 2 || !errors.Is(o.err, context.Canceled) {
		t.Fatalf("abandoned call: %+v, want item 2 with context.Canceled", o)
	}
	g.release <- struct{}{}
	if b := <-g.started; !slices.Equal(b, []int{3}) {
		t.Fatalf("next batch %v, want [3]", b)
	}
	g.release <- struct{}{}
	for range 2 {
		if o := <-out; o.err != nil || o.res != o.item*10 {
			t.Errorf("item %d: %d, %v", o.item, o.res, o.err)
		}
	}
}

// A caller asked to lead that gives up at the same time passes the lead on.
func TestAbandonAfterAskedToLead(t *testing.T) {
	q := New(func(_ context.Context, items []int) []int { return items }, Options{})
	c := &call[int, int]{item: 1, ready: make(chan bool, 1)}
	next := &call[int, int]{item: 2, ready: make(chan bool, 1)}
	q.pending = []*call[int, int]{c, next}
	q.busy = true
	q.handOff() // asks c
	if !q.abandon(c) {
		t.Fatal("abandon of a queued call reported it taken")
	}
	select {
	case lead := <-next.ready:
		if !lead {
			t.Fatal("next call got a result instead of the lead")
		}
	default:
		t.Fatal("the lead was not passed on")
	}
	q.pending = nil
	q.abandon(next) // not queued any more: no effect
	if !q.busy {
		t.Error("queue idle while the next caller leads")
	}
}

// A caller whose ctx ends after its item was taken gets the batch's result:
// the batch may have acted on it.
func TestCancelAfterTakenGetsResult(t *testing.T) {
	g := newGate()
	q := New(g.run, Options{})
	out := make(chan outcome, 10)
	bg := context.Background()
	go do(q, bg, 1, out)
	<-g.started
	ctx, cancel := context.WithCancel(bg)
	go do(q, ctx, 2, out)
	waitQueued(t, q, 1)
	go do(q, bg, 3, out)
	waitQueued(t, q, 2)
	g.release <- struct{}{}
	<-g.started // batch [2 3], led by 2's caller
	cancel()
	time.Sleep(10 * time.Millisecond)
	g.release <- struct{}{}
	for range 3 {
		if o := <-out; o.err != nil || o.res != o.item*10 {
			t.Errorf("item %d: %d, %v", o.item, o.res, o.err)
		}
	}
}

func TestPanicLeavesNobodyWaiting(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	first := true
	q := New(func(_ context.Context, items []int) []int {
		if first {
			first = false
			close(started)
			<-release
			panic("boom")
		}
		return items
	}, Options{})
	out := make(chan outcome, 10)
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		_, _ = q.Do(context.Background(), 1)
	}()
	<-started
	go do(q, context.Background(), 2, out)
	waitQueued(t, q, 1)
	close(release)
	if p := <-panicked; p != "boom" {
		t.Fatalf("leader recovered %v, want the panic", p)
	}
	if o := <-out; o.err != nil || o.res != 2 {
		t.Fatalf("call after the panic: %+v", o)
	}

	// A follower inside the panicking batch gets ErrPanicked.
	g := newGate()
	q = New(func(ctx context.Context, items []int) []int {
		if len(items) > 1 {
			panic("boom")
		}
		return g.run(ctx, items)
	}, Options{})
	go do(q, context.Background(), 1, out)
	<-g.started
	go func() {
		defer func() { panicked <- recover() }()
		_, _ = q.Do(context.Background(), 2)
	}()
	waitQueued(t, q, 1)
	go do(q, context.Background(), 3, out)
	waitQueued(t, q, 2)
	g.release <- struct{}{}
	if o := <-out; o.item != 1 || o.err != nil {
		t.Fatalf("first batch: %+v", o)
	}
	if p := <-panicked; p != "boom" {
		t.Fatalf("leader of the second batch recovered %v", p)
	}
	if o := <-out; o.item != 3 || !errors.Is(o.err, ErrPanicked) {
		t.Fatalf("follower of a panicking batch: %+v, want ErrPanicked", o)
	}
	close(g.release)
	if r, err := q.Do(context.Background(), 4); err != nil || r != 40 {
		t.Fatalf("queue after the panic: %d, %v", r, err)
	}
}

// Many concurrent callers, some giving up: every call returns, each with
// its own result or its ctx's error, and the queue ends idle (-race).
func TestConcurrentCallers(t *testing.T) {
	q := New(func(_ context.Context, items []int) []int {
		time.Sleep(100 * time.Microsecond)
		out := make([]int, len(items))
		for i, v := range items {
			out[i] = -v
		}
		return out
	}, Options{Max: 7})
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%5)*100*time.Microsecond+time.Microsecond)
			defer cancel()
			if i%2 == 0 {
				ctx = context.Background()
			}
			r, err := q.Do(ctx, i)
			switch {
			case err != nil && !errors.Is(err, context.DeadlineExceeded):
				t.Errorf("Do(%d): %v", i, err)
			case err == nil && r != -i:
				t.Errorf("Do(%d) = %d", i, r)
			case err != nil && i%2 == 0:
				t.Errorf("Do(%d) without deadline: %v", i, err)
			}
		})
	}
	wg.Wait()
	if q.busy || len(q.pending) != 0 {
		t.Errorf("queue not idle: busy %v, %d pending", q.busy, len(q.pending))
	}
}
