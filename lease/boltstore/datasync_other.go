//go:build !linux

package boltstore

import "os"

// datasync makes f's data durable.
func datasync(f *os.File) error { return f.Sync() }

// preallocate is done on Linux only (datasync_linux.go).
func preallocate(*os.File, int64) {}
