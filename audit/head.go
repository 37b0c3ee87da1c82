package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// head is the content of the head file <file>.head: the seq and the line
// hash of the last record the Writer made durable, over the whole chain
// (after a rotation it names the last record of the rotated file until
// the new file has one).
type head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// HeadSuffix is appended to the log file's name to name its head file.
const HeadSuffix = ".head"

// readHead reads the head file at path. The error wraps os.ErrNotExist
// when there is none.
func readHead(path string) (head, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return head{}, err
	}
	var h head
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil || len(h.Hash) != len(Genesis) {
		return head{}, fmt.Errorf("head file %s is not a head (want {\"seq\":N,\"hash\":\"<64 hex>\"}): %q", path, b)
	}
	return h, nil
}

// writeHead replaces the head file at path atomically: a temporary file
// renamed over it, so a reader sees the old head or the new one. With
// durable, the temporary file and the directory are synced too; without,
// the head may lag the log after a power loss (see the package doc).
func writeHead(path string, h head, durable bool) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil && durable {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write head %s: %w", path, err)
	}
	return nil
}

// headSize is the length of a head written in place: its JSON padded with
// spaces, and a newline. It holds any seq (20 digits) and hash.
const headSize = 128

// headInPlace overwrites the head file open as f with h, at offset 0, in
// one pwrite of headSize bytes: no new file and no rename, so the commit
// path pays one small write instead of a create, a rename and their
// journal traffic. Not synced, as writeHead without durable; a write this
// small, at offset 0, is not torn by a crash of the broker (the kernel has
// it or not), and the head is rewritten durably by writeHead at open,
// rotation and close.
func headInPlace(f *os.File, h head) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if len(b) > headSize-1 {
		return fmt.Errorf("head of %d bytes", len(b))
	}
	buf := bytes.Repeat([]byte{' '}, headSize)
	copy(buf, b)
	buf[headSize-1] = '\n'
	if _, err := f.WriteAt(buf, 0); err != nil {
		return fmt.Errorf("write head %s: %w", f.Name(), err)
	}
	return nil
}

// syncDir makes the entries of dir (a rename, a new file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil && !errors.Is(cerr, os.ErrClosed) {
		err = cerr
	}
	return err
}
