package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/credbroker/credbroker/client"
)

// child is the running exec command.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
	code int           // valid after done
}

func (c *child) exitCode() int {
	<-c.done
	return c.code
}

// startChild starts the command with the credentials curs (one per slot)
// in its environment.
func (a *Agent) startChild(curs []*client.Credential) error {
	env := os.Environ()
	for i, s := range a.slots {
		for name, t := range s.cfg.env {
			v, err := render(t, curs[i])
			if err != nil {
				return fmt.Errorf("agent: role %s: env %s: %w", s.cfg.Role, name, err)
			}
			env = append(env, name+"="+string(v))
		}
	}
	argv := a.cfg.Exec.Command
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = a.o.Stdin, a.o.Stdout, a.o.Stderr
	if cmd.Stdin == nil {
		cmd.Stdin = os.Stdin
	}
	if cmd.Stdout == nil {
		cmd.Stdout = os.Stdout
	}
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	// Its own process group: a signal is forwarded to the command and to
	// what it started (sh -c), and a terminal's ^C reaches it only once,
	// through the agent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		// exec's error names the program, never the environment.
		return fmt.Errorf("agent: start the command: %w", err)
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		err := cmd.Wait()
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee):
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				c.code = 128 + int(ws.Signal())
			} else {
				c.code = ee.ExitCode()
			}
		default:
			c.code = 1
		}
	}()
	for i, s := range a.slots {
		s.forChild = curs[i].LeaseID
	}
	a.mu.Lock()
	a.child = c
	a.mu.Unlock()
	a.log.Info("agent: command started", "pid", cmd.Process.Pid, "command", argv[0])
	return nil
}

// forward sends sig to the child's process group, if there is a child.
func (a *Agent) forward(sig os.Signal) {
	a.mu.Lock()
	c := a.child
	a.mu.Unlock()
	if c == nil {
		return
	}
	select {
	case <-c.done:
		return
	default:
	}
	if s, ok := sig.(syscall.Signal); ok {
		_ = syscall.Kill(-c.cmd.Process.Pid, s)
	}
}

// stopChild sends sig to the child, waits for it up to the stop timeout,
// then kills it; nil if it exited with 0, else an *ExitError.
func (a *Agent) stopChild(sig os.Signal) error {
	a.mu.Lock()
	c := a.child
	a.mu.Unlock()
	if c == nil {
		return nil
	}
	a.forward(sig)
	t := time.NewTimer(a.cfg.Exec.StopTimeout.Duration)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		a.log.Warn("agent: the command did not stop in time; killing it", "timeout", a.cfg.Exec.StopTimeout.String())
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
	a.mu.Lock()
	a.child = nil
	a.mu.Unlock()
	a.log.Info("agent: the command exited", "status", c.code)
	if c.code != 0 {
		return &ExitError{Code: c.code}
	}
	return nil
}
