package lease

import (
	"slices"
	"time"
)

// Stats is a snapshot of the leases a Manager holds, for metrics. It costs
// O(states + origin groups), never O(leases).
type Stats struct {
	// ByState counts the leases held by state (CREATING, ACTIVE,
	// REVOKING); those being begun count as CREATING.
	ByState map[State]int
	// ByRole counts the leases held by role.
	ByRole map[string]int
	// OldestRevoking is when the longest-REVOKING lease became REVOKING
	// (seen by this Manager: a restored one counts from the restore); zero
	// when none is.
	OldestRevoking time.Time
}

// Stats returns a snapshot of the counts of the leases held. Before a
// deferred restore has finished, it counts only the leases begun since.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Stats{ByState: map[State]int{}, ByRole: make(map[string]int, len(m.index.byRole))}
	for _, st := range []State{StateCreating, StateActive, StateRevoking} {
		s.ByState[st] = m.index.states[st]
	}
	for role, gs := range m.index.byRole {
		n := 0
		for _, g := range gs {
			n += len(g.members)
		}
		s.ByRole[role] = n
	}
	s.OldestRevoking = m.index.revoking.oldest()
	return s
}

// revokingQueue is the REVOKING entries in the order they became REVOKING.
// An entry that left the state (gone) stays until it reaches the front or
// the queue is compacted, so that a push and a look at the oldest are
// O(1) amortized.
type revokingQueue struct {
	items []revokingItem
	head  int
}

type revokingItem struct {
	e     *entry
	since time.Time
}

func (it revokingItem) live() bool { return !it.e.gone && it.e.state() == StateRevoking }

// push adds e, REVOKING since since; live is the number of REVOKING
// entries, which bounds how much garbage is kept.
func (q *revokingQueue) push(e *entry, since time.Time, live int) {
	q.items = append(q.items, revokingItem{e: e, since: since})
	q.trim()
	if n := len(q.items) - q.head; n > 64 && n > 2*live {
		q.items = slices.DeleteFunc(slices.Clone(q.items[q.head:]), func(it revokingItem) bool { return !it.live() })
		q.head = 0
	}
}

// trim drops the entries at the front that are no longer REVOKING.
func (q *revokingQueue) trim() {
	for q.head < len(q.items) && !q.items[q.head].live() {
		q.items[q.head] = revokingItem{}
		q.head++
	}
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
}

// oldest is when the oldest live entry became REVOKING, or zero.
func (q *revokingQueue) oldest() time.Time {
	q.trim()
	if q.head == len(q.items) {
		return time.Time{}
	}
	return q.items[q.head].since
}
