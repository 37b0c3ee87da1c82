package tcpproxy

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// echo is a target that sends every line back.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func newProxy(t *testing.T) *Proxy {
	t.Helper()
	p, err := Listen(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

type client struct {
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, p *Proxy) *client {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{c: c, r: bufio.NewReader(c)}
}

// roundTrip sends a line and returns the echo, or the error met within
// wait.
func (c *client) roundTrip(line string, wait time.Duration) (string, error) {
	_ = c.c.SetDeadline(time.Now().Add(wait))
	if _, err := c.c.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return got[:len(got)-1], nil
}

func mustEcho(t *testing.T, c *client, line string) {
	t.Helper()
	got, err := c.roundTrip(line, 2*time.Second)
	if err != nil || got != line {
		t.Fatalf("echo of %q: %q, %v", line, got, err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestProxy(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, p *Proxy)
	}{
		{"open forwards both ways", func(t *testing.T, p *Proxy) {
			c := dial(t, p)
			mustEcho(t, c, "one")
			mustEcho(t, c, "two")
			if p.Mode() != Open {
				t.Fatalf("mode %s, want open", p.Mode())
			}
		}},
		{"cut resets live and new connections until restored", func(t *testing.T, p *Proxy) {
			live := dial(t, p)
			mustEcho(t, live, "before")
			p.Cut()
			if _, err := live.roundTrip("during", 2*time.Second); err == nil || isTimeout(err) {
				t.Fatalf("live connection after Cut: %v, want a reset", err)
			}
			// The reset may come at the dial or at the first exchange.
			if c, err := net.Dial("tcp", p.Addr()); err == nil {
				cl := &client{c: c, r: bufio.NewReader(c)}
				if _, err := cl.roundTrip("new", 2*time.Second); err == nil || isTimeout(err) {
					t.Fatalf("new connection while cut: %v, want a reset", err)
				}
				c.Close()
			}
			p.Restore()
			mustEcho(t, dial(t, p), "after")
		}},
		{"blackhole holds traffic without an error, restore delivers it", func(t *testing.T, p *Proxy) {
			live := dial(t, p)
			mustEcho(t, live, "before")
			p.Blackhole()
			if _, err := live.roundTrip("held", 300*time.Millisecond); !isTimeout(err) {
				t.Fatalf("live connection while blackholed: %v, want silence (a timeout)", err)
			}
			fresh := dial(t, p) // accepted: no refusal, no reset
			if _, err := fresh.roundTrip("waiting", 300*time.Millisecond); !isTimeout(err) {
				t.Fatalf("new connection while blackholed: %v, want silence", err)
			}
			p.Restore()
			for _, c := range []*client{live, fresh} {
				_ = c.c.SetDeadline(time.Now().Add(2 * time.Second))
				got, err := c.r.ReadString('\n')
				if err != nil {
					t.Fatalf("held line after Restore: %v", err)
				}
				if got != "held\n" && got != "waiting\n" {
					t.Fatalf("held line after Restore: %q", got)
				}
				mustEcho(t, c, "after")
			}
		}},
		{"cut after blackhole resets the held connections", func(t *testing.T, p *Proxy) {
			live := dial(t, p)
			mustEcho(t, live, "before")
			p.Blackhole()
			p.Cut()
			if _, err := live.roundTrip("during", 2*time.Second); err == nil || isTimeout(err) {
				t.Fatalf("after Blackhole then Cut: %v, want a reset", err)
			}
			p.Restore()
			mustEcho(t, dial(t, p), "after")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, newProxy(t)) })
	}
}

func TestCloseEndsEverything(t *testing.T) {
	p, err := Listen(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, p)
	mustEcho(t, c, "x")
	p.Blackhole()
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not return")
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Fatal("the proxy still accepts after Close")
	}
}
