package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// printJSON writes m as one protojson document. Every field is written,
// zero values too, so a script reads "revoked": 0 rather than a missing key.
// protojson varies its whitespace on purpose; the document is re-indented
// so the output is the same from one build to the next.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	out.WriteByte('\n')
	_, err = out.WriteTo(w)
	return err
}

// table writes tab-separated rows as aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
		// A cell may not break the layout.
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(cells[i])
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// leaseTable prints leases one per row; the LAST ERROR column is there only
// when a revocation is failing.
func leaseTable(w io.Writer, leases []*pb.Lease) error {
	withErr := false
	for _, l := range leases {
		withErr = withErr || l.GetLastError() != ""
	}
	header := []string{"LEASE ID", "ROLE", "DATABASE", "SPIFFE ID", "USERNAME", "STATE", "ISSUED", "EXPIRES"}
	if withErr {
		header = append(header, "LAST ERROR")
	}
	t := newTable(w, header...)
	for _, l := range leases {
		cells := []string{l.GetId(), l.GetRole(), l.GetDatabase(), l.GetSpiffeId(), l.GetUsername(),
			l.GetState().String(), stamp(l.GetIssueTime()), stamp(l.GetExpireTime())}
		if withErr {
			cells = append(cells, l.GetLastError())
		}
		t.row(cells...)
	}
	return t.flush()
}

// stamp is a timestamp in UTC to the second, as an operator reads it.
func stamp(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

func dur(d *durationpb.Duration) string {
	if d == nil {
		return ""
	}
	return d.AsDuration().String()
}
