package boltstore

import "golang.org/x/sys/unix"

// dropResident tells the kernel that the process no longer needs the pages
// of [addr, addr+n) resident: MADV_DONTNEED. bbolt maps the store shared
// and read-only (it writes with pwrite, never through the map), so this
// only unmaps clean pages from this process; they stay in the page cache
// and the next read of one faults it back in from there, unchanged. The
// advice is best effort: if the kernel refuses it, the pages merely stay
// resident, so the error is ignored.
func dropResident(addr, n uintptr) {
	// The raw syscall takes the address as it comes from bbolt (a
	// uintptr); unix.Madvise would need it as a []byte, made with unsafe.
	_, _, _ = unix.Syscall(unix.SYS_MADVISE, addr, n, unix.MADV_DONTNEED)
}
