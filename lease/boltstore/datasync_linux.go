package boltstore

import (
	"os"
	"syscall"
)

// datasync makes f's data durable without its timestamps: for a log
// segment overwritten in place, one write to the disk.
func datasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
