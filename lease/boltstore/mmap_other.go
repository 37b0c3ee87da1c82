//go:build !linux

package boltstore

// dropResident does nothing here: the resident store pages it gives back
// on Linux are counted and reclaimed differently on other systems.
func dropResident(addr, n uintptr) {}
