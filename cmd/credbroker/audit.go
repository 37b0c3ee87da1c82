package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/credbroker/credbroker/audit"
)

// auditCmd runs `credbroker audit verify FILE…`.
func auditCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "verify" {
		fmt.Fprintln(stderr, "usage: credbroker audit verify FILE...")
		return errors.New("audit: want the subcommand verify")
	}
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: credbroker audit verify FILE...")
		fmt.Fprintln(stderr, "Checks the hash chain of an audit log across its files, given oldest first")
		fmt.Fprintln(stderr, "(e.g. audit.log.[0-9]* audit.log), and against the last file's .head.")
		fmt.Fprintln(stderr, "Exits 0 when intact; otherwise names the first broken record.")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("audit verify: no file given")
	}
	rep, err := audit.Verify(fs.Args()...)
	if err != nil {
		return err // "audit: chain broken at FILE:LINE (seq N): kind: detail"
	}
	head := "no head file (the tail is not checked)"
	if rep.Head {
		head = "head matches"
		if rep.BeyondHead > 0 {
			head = fmt.Sprintf("head matches, %d records after it", rep.BeyondHead)
		}
	}
	files := fmt.Sprintf("%d files", rep.Files)
	if rep.Files == 1 {
		files = "1 file"
	}
	if rep.Records == 0 {
		fmt.Fprintf(stdout, "intact: 0 records in %s, %s\n", files, head)
		return nil
	}
	fmt.Fprintf(stdout, "intact: %d records (seq %d-%d) in %s, %s to %s, %s\n",
		rep.Records, rep.FirstSeq, rep.LastSeq, files,
		rep.First.Format(time.RFC3339Nano), rep.Last.Format(time.RFC3339Nano), head)
	return nil
}
