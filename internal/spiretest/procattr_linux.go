package spiretest

import "syscall"

// sysProcAttr has the kernel kill SPIRE when the test binary dies (a panic or
// go test's timeout), so no server outlives its test holding ports and
// sockets.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
