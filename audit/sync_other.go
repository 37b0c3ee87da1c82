//go:build !linux

package audit

import "os"

// fdatasync is f.Sync where fdatasync(2) is not available.
func fdatasync(f *os.File) error { return f.Sync() }

// lock does nothing where flock(2) is not used: one Writer per file is
// the operator's business there.
func lock(*os.File) error { return nil }
