// Package tcpproxy is a TCP proxy for tests that need a network fault
// between two processes, such as a broker replica cut off from its lease
// store while the others still reach it.
//
// A Proxy forwards every connection it accepts on 127.0.0.1 to one
// target. Its link is in one of three modes:
//
//   - open (the start, and after Restore): bytes flow both ways;
//   - cut (Cut): every live connection is reset, and new ones are accepted
//     and reset at once, as when the far side is down;
//   - blackholed (Blackhole): connections stay up but nothing crosses, as
//     when packets vanish in a partition: no error, no reset, only
//     silence. New connections are accepted and wait. Restore lets the
//     held bytes through (TCP would retransmit them), so a connection that
//     neither side gave up on meanwhile carries on.
package tcpproxy

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is the state of a Proxy's link.
type Mode int

// The modes of a Proxy.
const (
	Open Mode = iota
	Cutoff
	Blackholed
)

func (m Mode) String() string {
	switch m {
	case Open:
		return "open"
	case Cutoff:
		return "cut"
	case Blackholed:
		return "blackholed"
	}
	return "unknown"
}

// dialTimeout bounds a connection to the target.
const dialTimeout = 5 * time.Second

// Proxy forwards connections from Addr to a target. The zero value is not
// usable: call Listen.
type Proxy struct {
	target string
	ln     net.Listener

	mu    sync.Mutex
	mode  Mode
	open  chan struct{} // closed while the mode is Open
	conns map[*link]struct{}
	wg    sync.WaitGroup
}

// link is one proxied connection: the client's and the target's sides.
type link struct {
	client, server net.Conn // server is nil until dialled
	closed         atomic.Bool
}

// Listen starts a proxy on 127.0.0.1 (a port of the system's choosing)
// forwarding to target (host:port). Close stops it.
func Listen(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	open := make(chan struct{})
	close(open)
	p := &Proxy{target: target, ln: ln, open: open, conns: map[*link]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Port is the proxy's port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Mode returns the link's mode.
func (p *Proxy) Mode() Mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

// Cut resets every live connection and every new one until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.close()
	p.mode = Cutoff
	for l := range p.conns {
		l.reset()
		delete(p.conns, l)
	}
}

// Blackhole stops all traffic, on live connections and new ones, without
// closing anything, until Restore.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.close()
	p.mode = Blackholed
}

// Restore opens the link again: held bytes and connections go through.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode != Open {
		p.mode = Open
		close(p.open)
	}
}

// close ends the open period (p.mu held).
func (p *Proxy) close() {
	if p.mode == Open {
		p.open = make(chan struct{})
	}
}

// Close stops listening, resets every connection and waits for the
// proxy's goroutines.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.Cut()
	p.Restore() // release goroutines waiting for the link
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		l := &link{client: c}
		p.mu.Lock()
		if p.mode == Cutoff {
			p.mu.Unlock()
			l.reset()
			continue
		}
		p.conns[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(l)
	}
}

// serve dials the target once the link is open and copies both ways.
func (p *Proxy) serve(l *link) {
	defer p.wg.Done()
	defer p.forget(l)
	if !p.wait(l) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	var d net.Dialer
	s, err := d.DialContext(ctx, "tcp", p.target)
	cancel()
	if err != nil {
		l.reset()
		return
	}
	p.mu.Lock()
	if _, live := p.conns[l]; !live {
		p.mu.Unlock()
		s.Close()
		return // cut while dialling
	}
	l.server = s
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { p.pipe(l, s, l.client); done <- struct{}{} }()
	go func() { p.pipe(l, l.client, s); done <- struct{}{} }()
	<-done
	l.reset()
	<-done
}

// pipe copies src to dst, holding each chunk read while the link is not
// open. Either side's end (or error) ends the whole link: the tests'
// protocols do not half-close.
func (p *Proxy) pipe(l *link, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.wait(l) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// wait blocks until the link is open, and reports false if l was reset
// meanwhile.
func (p *Proxy) wait(l *link) bool {
	for {
		p.mu.Lock()
		open, mode := p.open, p.mode
		p.mu.Unlock()
		if mode == Open {
			return true
		}
		select {
		case <-open:
		case <-time.After(50 * time.Millisecond):
			// Cut resets the connection: the next read or write fails,
			// but a goroutine parked here must notice too.
			if l.closed.Load() {
				return false
			}
		}
	}
}

func (p *Proxy) forget(l *link) {
	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
}

// reset closes both sides with an RST rather than a FIN, as a dead peer
// or a firewall's reject would.
func (l *link) reset() {
	l.closed.Store(true)
	for _, c := range []net.Conn{l.client, l.server} {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		if c != nil {
			_ = c.Close()
		}
	}
}
