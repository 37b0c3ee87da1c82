// Package audit writes and verifies the broker's tamper-evident audit log:
// one JSON object per line for every security-relevant event, each line
// chained to the one before by its SHA-256, durable before Write returns.
// It knows nothing of gRPC, SQL or SPIFFE: a Record holds strings only,
// and no field can carry a password or a DSN (no free-form map; the
// reason is checked, see LooksSecret). docs/audit.md describes the file
// format for operators.
//
// # The chain
//
// Every record carries seq (1, 2, … with no gap) and prev: the hex SHA-256
// of the previous record's line, its exact bytes without the newline
// (Genesis, 64 zeros, for the first). Editing, deleting or reordering a
// line breaks the prev of the line after it or the seq order, and Verify
// names the first broken record.
//
// The last line has no successor, so the Writer also keeps the chain head
// in <file>.head ({"seq":N,"hash":"…"}): the seq and hash of the last
// durable record, replaced atomically (rename) after each group commit. A
// cut-off or edited tail no longer matches it: Verify reports it, and Open
// refuses to write after such a tail (ErrTailMismatch).
//
// The chain proves order and completeness against anyone who edits the
// file without recomputing hashes. It is not a signature: whoever can
// rewrite the file and its head can forge a consistent chain. Ship the
// lines elsewhere (Stdout to a collector) to protect against that.
//
// # Durability
//
// Write returns once its record is written and fdatasynced. Concurrent
// Writes share one write(2) and one fdatasync (group commit with
// internal/batch): under load each sync carries every record that arrived
// during the previous one, and a lone Write pays one sync, no timer. The
// head file is not synced after each commit (that would double the cost):
// after a power loss it can lag the log by the last commits. Open and
// Verify accept records beyond the head when the head's record is in the
// file unchanged (Report.BeyondHead counts them), so after a power loss a
// cut of those records would go unnoticed: at most the commits since the
// head was last synced (at Open, rotation and Close).
//
// Fail closed: when the file cannot be written or synced, Write returns an
// error wrapping ErrUnavailable and the Writer stays failed (the state of
// the file after a failed fsync is unknown): every later Write fails
// the same way until the log is fixed and reopened. The broker refuses
// the operation it was recording.
//
// # Rotation
//
// Before a group commit, a file of MaxSize bytes or more is renamed to
// <file>.<seq of its first record, 12 digits> (RotatedName) and a new file
// started; its first record's prev is the hash of the rotated file's last
// line, so the chain runs on across files and the rotated names sort in
// chain order. The head is synced before the rename, so a crash leaves
// either the full file or an empty one with a head to resume from.
//
// # Resuming
//
// Open resumes the chain from the file's last line (or from the head when
// the file is empty), after checking that line against the head; it
// refuses a file with records and no head. A
// partial last line, which only a crash during an unacknowledged write
// leaves, is cut off. The Writer holds an exclusive flock(2) on the file
// (Linux), so a second Writer, another broker on the same file, cannot
// fork the chain: its Open fails.
package audit
