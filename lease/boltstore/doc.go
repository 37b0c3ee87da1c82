// Package boltstore is the embedded lease.Store: one bbolt file holding a
// bucket of leases (lease ID → record) and a bucket of deregistrations
// (SPIFFE ID → time). It passes lease/leasetest.
//
// # Durability
//
// Every write (Put, PutAll, Delete, Deny, Allow) is committed and fsynced
// before it returns. Concurrent writes share one transaction and its fsync
// (group commit with internal/batch, commit.go): a lone write never waits,
// and under load a commit carries every write that arrived during the
// previous one. A write whose ctx ends while it waits for the commit before
// its own returns the ctx's error and wrote nothing; once its commit has
// started it returns that commit's outcome.
//
// # Opening
//
// Open never starts empty over lost data: a file that is empty, truncated,
// not a bbolt file, without the leases bucket or with an unreadable page is
// refused (lease.ErrStoreCorrupt); with WithMustExist a missing file is
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
