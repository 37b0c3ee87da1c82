// Package failpoint lets crash tests kill the process at named points.
//
// Code marks a point with Hit("name"). In a normal build Hit is an empty
// function the compiler inlines away. In a build with the tag failpoints,
// Hit reads the environment variable CREDBROKER_FAILPOINT once (a
// comma-separated list of names) and, when a listed point is hit, sends
// SIGKILL to its own process: no deferred function, no flush, no clean
// shutdown, as in a power cut. A test runs the program (or re-runs its own
// test binary) with the variable set, watches it die, then restarts it on
// the same files and checks that recovery restores the invariants.
//
//	go test -tags failpoints ./...
package failpoint

// EnvVar names the environment variable read in failpoints builds.
const EnvVar = "CREDBROKER_FAILPOINT"
