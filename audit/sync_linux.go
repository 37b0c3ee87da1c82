package audit

import (
	"errors"
	"os"
	"syscall"
)

// fdatasync flushes f's data (and the size the data needs) to stable
// storage without the rest of its metadata: the cost the log pays once per
// group commit.
func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}

// lock takes an exclusive advisory lock on f, so that two Writers (two
// brokers) cannot fork one chain. It is released when f is closed.
func lock(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) { lerr = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB) }); err != nil {
		return err
	}
	if lerr == syscall.EWOULDBLOCK {
		return errors.New("another Writer has the file open (flock)")
	}
	return lerr
}
