package main

import "syscall"

// setParentDeathSignal asks Linux to SIGKILL this process when its parent
// dies, so that no replica child outlives a bench cut short.
func setParentDeathSignal() error {
	_, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
