//go:build !linux

package spiretest

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return nil }
