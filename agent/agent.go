package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/credbroker/credbroker/client"
)

// Options are what the command line (or a test) gives the agent besides
// its config.
type Options struct {
	// Once fetches each credential once, writes the files and returns
	// without revoking (an init container).
	Once bool
	// Signals the process received: SIGTERM and SIGINT stop the agent (in
	// exec mode after the child, which is sent the same signal); any other
	// is forwarded to the child. Nil: only ctx stops it.
	Signals <-chan os.Signal
	Logger  *slog.Logger
	// Stdin, Stdout, Stderr of the child (the agent's own when nil).
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Now is the clock of the health check (time.Now when nil).
	Now func() time.Time
	// ClientOptions are added to the client's (tests: a Workload API
	// source).
	ClientOptions []client.Option
}

// ExitError is the exec child's exit status when it is not 0; the agent
// exits with the same code (128+n when the child died of signal n).
type ExitError struct{ Code int }

func (e *ExitError) Error() string {
	return fmt.Sprintf("agent: the command exited with status %d", e.Code)
}
func (e *ExitError) ExitCode() int { return e.Code }

// Agent keeps the credentials of its config fresh in files and in the
// environment of one child command.
type Agent struct {
	cfg *Config
	o   Options
	log *slog.Logger

	mu    sync.Mutex // slots' cur, ended, delivered; child
	slots []*slot
	child *child
	ready bool // every credential delivered: health's 200 needs it

	notify chan struct{} // a watcher event happened (cap 1)
}

type slot struct {
	cfg *CredentialConfig

	// under Agent.mu: set by the watcher's events
	cur   *client.Credential
	ended error
	// under Agent.mu: set by the loop
	written *client.Credential // what the file holds (file mode)

	// the loop's own
	fileSum  [sha256.Size]byte
	forChild string // lease ID of the credential the child has
}

// New returns an agent for cfg (from ParseConfig). Nothing runs until Run.
func New(cfg *Config, o Options) *Agent {
	a := &Agent{cfg: cfg, o: o, log: o.Logger, notify: make(chan struct{}, 1)}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.o.Now == nil {
		a.o.Now = time.Now
	}
	for i := range cfg.Credentials {
		a.slots = append(a.slots, &slot{cfg: &cfg.Credentials[i]})
	}
	return a
}

// Run connects to the broker and keeps every credential until ctx ends or
// a stop signal comes (then it revokes them, removes the files and returns
// nil or the child's *ExitError), a credential is revoked or refused (it
// returns why, with the files removed), or the exec child exits by itself
// (*ExitError, or nil for status 0). With Options.Once it returns once the
// files are written.
func (a *Agent) Run(ctx context.Context) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var stopSig os.Signal = syscall.SIGTERM
	var sigMu sync.Mutex
	sigDone := make(chan struct{})
	defer close(sigDone)
	if a.o.Signals != nil {
		go func() {
			for {
				select {
				case <-sigDone:
					return
				case s := <-a.o.Signals:
					if s == syscall.SIGTERM || s == syscall.SIGINT {
						sigMu.Lock()
						if ctx.Err() == nil {
							stopSig = s
						}
						sigMu.Unlock()
						a.log.Info("agent: stopping", "signal", s.String())
						stop()
						continue
					}
					a.forward(s)
				}
			}
		}()
	}

	if a.o.Once && a.cfg.Exec != nil {
		// Nothing would be left to run the command. (env needs exec, so
		// without exec every credential has a file.)
		return errors.New("agent: -once writes files only; remove exec (and env)")
	}
	c, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if a.o.Once {
		return a.once(ctx, c)
	}

	if a.cfg.Health.Listen != "" {
		lis, err := net.Listen("tcp", a.cfg.Health.Listen)
		if err != nil {
			return fmt.Errorf("agent: health: %w", err)
		}
		srv := &http.Server{Handler: a.healthHandler(), ReadHeaderTimeout: 5 * time.Second}
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(lis) }()
		defer func() { _ = srv.Close(); <-done }()
	}

	var watchers []*client.Watcher
	closeAll := func() {
		for i, w := range watchers {
			if err := w.Close(); err != nil {
				a.log.Error("agent: revoke failed; the broker ends the lease at its expiry",
					"role", a.slots[i].cfg.Role, "error", err.Error())
				continue
			}
			a.log.Info("agent: leases revoked", "role", a.slots[i].cfg.Role)
		}
		a.removeFiles()
	}
	defer closeAll()
	for _, s := range a.slots {
		w, err := c.Watch(ctx, s.cfg.Role, client.WatchTTL(s.cfg.TTL.Duration), client.OnEvent(a.onEvent(s)))
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopped while starting
			}
			return fmt.Errorf("agent: %w", err)
		}
		watchers = append(watchers, w)
	}
	err = a.loop(ctx)
	if ctx.Err() != nil && a.child != nil {
		sigMu.Lock()
		sig := stopSig
		sigMu.Unlock()
		err = a.stopChild(sig)
	}
	return err
}

func (a *Agent) connect(ctx context.Context) (*client.Client, error) {
	opts := []client.Option{client.WithServerID(a.cfg.Broker.ServerID), client.WithLogger(a.log)}
	switch {
	case a.cfg.SVID != nil:
		opts = append(opts, client.WithFiles(a.cfg.SVID.CertFile, a.cfg.SVID.KeyFile, a.cfg.SVID.BundleFile))
	case len(a.o.ClientOptions) == 0:
		socket := ""
		if a.cfg.WorkloadAPI != nil {
			socket = a.cfg.WorkloadAPI.Socket
		}
		opts = append(opts, client.WithWorkloadAPI(socket))
	}
	c, err := client.New(ctx, a.cfg.Broker.Addr, append(opts, a.o.ClientOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return c, nil
}

// once issues each credential and writes its file; the leases are not
// revoked: they end at their ttl. If one fails, those already issued are
// revoked and their files removed, so that a retried init container does
// not pile up users.
func (a *Agent) once(ctx context.Context, c *client.Client) (err error) {
	var issued []*client.Credential
	defer func() {
		if err == nil {
			return
		}
		for _, cr := range issued {
			if rerr := c.Revoke(context.WithoutCancel(ctx), cr.LeaseID); rerr != nil {
				a.log.Error("agent: revoke failed; the lease ends at its expiry", "lease_id", cr.LeaseID, "error", rerr.Error())
			}
		}
		a.removeFiles()
	}()
	for _, s := range a.slots {
		var opts []client.RequestOption
		if s.cfg.TTL.Duration > 0 {
			opts = append(opts, client.WithTTL(s.cfg.TTL.Duration))
		}
		cr, err := c.Credential(ctx, s.cfg.Role, opts...)
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		issued = append(issued, cr)
		a.log.Info("agent: credential issued", "credential", cr)
		if err := a.writeFile(s, cr); err != nil {
			return err
		}
		a.log.Info("agent: file written; the lease is not revoked and ends at its expiry (-once)",
			"role", s.cfg.Role, "path", s.cfg.File.Path, "expire_time", cr.ExpireTime)
	}
	return nil
}

func (a *Agent) onEvent(s *slot) func(client.Event) {
	return func(ev client.Event) {
		a.mu.Lock()
		switch ev.Kind {
		case client.Ended:
			s.ended = ev.Err
		case client.Issued, client.Renewed, client.Rotated:
			s.cur = ev.Credential
		}
		a.mu.Unlock()
		switch ev.Kind {
		case client.Issued, client.Rotated:
			a.log.Info("agent: credential "+ev.Kind.String(), "credential", ev.Credential)
		case client.Renewed:
			// (A broken stream and the end are logged by the client.)
			a.log.Info("agent: lease renewed", "role", s.cfg.Role, "lease_id", ev.Credential.LeaseID, "expire_time", ev.Credential.ExpireTime)
		}
		select {
		case a.notify <- struct{}{}:
		default:
		}
	}
}

// loop applies the watchers' events until ctx ends, a credential ends or
// the child exits by itself.
func (a *Agent) loop(ctx context.Context) error {
	for {
		if err := a.apply(ctx); err != nil {
			return err
		}
		var exited <-chan struct{}
		if a.child != nil {
			exited = a.child.done
		}
		select {
		case <-ctx.Done():
			return nil
		case <-a.notify:
		case <-exited:
			code := a.child.exitCode()
			a.log.Info("agent: the command exited; revoking the leases", "status", code)
			a.mu.Lock()
			a.child = nil
			a.mu.Unlock()
			if code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		}
	}
}

// apply brings the files and the child up to the current credentials.
func (a *Agent) apply(ctx context.Context) error {
	a.mu.Lock()
	curs := make([]*client.Credential, len(a.slots))
	for i, s := range a.slots {
		if s.ended != nil {
			a.mu.Unlock()
			a.log.Error("agent: credential ended; stopping", "role", s.cfg.Role, "error", s.ended.Error())
			if a.child != nil {
				_ = a.stopChild(a.cfg.Exec.StopSignal.Signal)
			}
			return fmt.Errorf("agent: role %s: %w", s.cfg.Role, s.ended)
		}
		curs[i] = s.cur
	}
	a.mu.Unlock()
	all := true
	for i, s := range a.slots {
		if curs[i] == nil {
			all = false
			continue
		}
		if s.cfg.File != nil {
			if err := a.writeFile(s, curs[i]); err != nil {
				return err
			}
		}
	}
	a.mu.Lock()
	a.ready = all
	a.mu.Unlock()
	if !all || a.cfg.Exec == nil || ctx.Err() != nil {
		return nil
	}
	changed := false
	for i, s := range a.slots {
		changed = changed || s.forChild != curs[i].LeaseID
	}
	switch {
	case a.child == nil:
		return a.startChild(curs)
	case !changed:
		return nil
	case a.cfg.Exec.OnRotate == RotateSignal:
		for i, s := range a.slots {
			s.forChild = curs[i].LeaseID
		}
		a.log.Info("agent: new credential; signalling the command", "signal", a.cfg.Exec.RotateSignal.String())
		a.forward(a.cfg.Exec.RotateSignal.Signal)
		return nil
	default:
		a.log.Info("agent: new credential; restarting the command")
		if err := a.stopChild(a.cfg.Exec.StopSignal.Signal); err != nil {
			var ee *ExitError
			if !errors.As(err, &ee) {
				return err
			}
		}
		if ctx.Err() != nil {
			return nil // stopped during the restart: no new command
		}
		return a.startChild(curs)
	}
}

// writeFile renders s's file with cr and replaces it if it changed.
func (a *Agent) writeFile(s *slot, cr *client.Credential) error {
	b, err := render(s.cfg.file, cr)
	if err != nil {
		return fmt.Errorf("agent: role %s: render %s: %w", s.cfg.Role, s.cfg.File.Path, err)
	}
	sum := sha256.Sum256(b)
	if sum == s.fileSum {
		return nil
	}
	if err := writeFileAtomic(s.cfg.File.Path, b, os.FileMode(s.cfg.File.Mode)); err != nil {
		return fmt.Errorf("agent: role %s: %w", s.cfg.Role, err)
	}
	s.fileSum = sum
	a.mu.Lock()
	prev := s.written
	s.written = cr
	a.mu.Unlock()
	if prev == nil || prev.LeaseID != cr.LeaseID {
		a.log.Info("agent: file written", "role", s.cfg.Role, "path", s.cfg.File.Path, "username", cr.Username)
	}
	return nil
}

// removeFiles removes the files written: their credentials are revoked.
func (a *Agent) removeFiles() {
	for _, s := range a.slots {
		a.mu.Lock()
		written := s.written != nil
		a.mu.Unlock()
		if s.cfg.File == nil || !written {
			continue
		}
		if err := os.Remove(s.cfg.File.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			a.log.Error("agent: remove the credential file", "path", s.cfg.File.Path, "error", err.Error())
		}
	}
}
