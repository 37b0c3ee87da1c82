// Package boltstore is the embedded lease.Store: one bbolt file holding a
// bucket of leases (lease ID → record) and a bucket of deregistrations
// (SPIFFE ID → time), with a write-ahead log in front of it. It passes
// lease/leasetest.
//
// # Durability
//
// Every write (Put, Delete, Deny, Allow) is durable before it returns: it
// is appended to the store's write-ahead log, two files beside the bbolt
// file (<path>.wal0 and <path>.wal1), and the log is fdatasynced.
// Concurrent writes share one frame of the log and its sync (group commit
// with internal/batch, commit.go): a lone write never waits, and under load
// a frame carries every write that arrived during the previous one. The
// writes reach the bbolt file in checkpoints, many at a time, in the
// background: an ordinary fsynced bbolt transaction that also records the
// last frame it applied (wal.go). Open replays the frames the last
// checkpoint had not applied; a read (Get, Scan, Denied) first applies
// everything logged, so it sees every write that returned. PutAll (a bulk
// import) goes straight into the bbolt file in one transaction. Close
// applies the log and marks the store clean: a closed store is its bbolt
// file alone, and a copy of that file is a complete backup. A store in use
// is the bbolt file and its log together.
//
// A write whose ctx ends while it waits for the commit before its own
// returns the ctx's error and wrote nothing; once its commit has started it
// returns that commit's outcome.
//
// # Opening
//
// Open never starts empty over lost data: a file that is empty, truncated,
// not a bbolt file, without the leases bucket or with an unreadable page is
// refused (lease.ErrStoreCorrupt), and so is a log with frames missing
// between the last checkpoint and a later frame, or a missing log of a
// store not closed cleanly; with WithMustExist a missing file is
// lease.ErrStoreMissing (the broker's store is created once, by credbroker
// init-store). Open reads every record, on two cores, and remembers whether
// all would load: Store is a lease.Verifier, so Manager.DeferLoad refuses a
// bad store before serving and restores a good one in Run. It also knows
// how many leases it holds (lease.SizeHinter) and writes many in one
// transaction (lease.BulkPutter).
//
// # Records
//
// A record starts with its encoding's version byte (codec.go): JSON (v1,
// still read) or a compact binary form (v2, written), decoded without
// copying the strings many leases share. A deregistration is the same
// version byte and a time.
//
// # Memory
//
// Reading the whole file (Open's check, a Scan) would leave every page of
// the memory map resident: about 200 bytes of RSS per lease on top of the
// heap. The store gives the pages back as it goes (madvise, Linux), so a
// restored lease costs its heap only (docs/performance.md §4).
package boltstore
