/*
Package agent is `credbroker agent`: it keeps database credentials from a
broker fresh for programs that cannot link the Go client, as a sidecar or
an init container (docs/agent.md).

For each configured credential a client.Watcher holds a WatchCredential
stream, so the broker renews the lease and rotates the credential with an
overlap. The agent writes each credential to a file (a text/template,
replaced atomically) as soon as it arrives, before the previous user is
dropped, and/or passes it in the environment of one child command, which
it restarts or signals on a rotation and whose signals and exit code it
relays. On SIGTERM or SIGINT it stops the child, revokes every lease and
removes the files. A revocation or refusal stops it with an error.

Nothing here logs or prints a password or a DSN: credentials are logged
through client.Credential's LogValue, and template errors name fields,
not values.
*/
package agent
