package agent

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"
)

// Config is the agent's YAML config (docs/agent.md). Unknown keys are
// refused, so that a misspelt setting cannot silently do nothing.
type Config struct {
	Broker struct {
		// Addr is the broker's host:port.
		Addr string `yaml:"addr"`
		// ServerID is the broker's SPIFFE ID; the agent talks to no other.
		ServerID string `yaml:"server_id"`
	} `yaml:"broker"`
	// WorkloadAPI takes the SVID from the SPIFFE Workload API (the default
	// when svid is not set: $SPIFFE_ENDPOINT_SOCKET).
	WorkloadAPI *struct {
		Socket string `yaml:"socket"`
	} `yaml:"workload_api"`
	// SVID takes it from PEM files instead, read again when they change.
	SVID *struct {
		CertFile   string `yaml:"cert_file"`
		KeyFile    string `yaml:"key_file"`
		BundleFile string `yaml:"bundle_file"`
	} `yaml:"svid"`
	Credentials []CredentialConfig `yaml:"credentials"`
	Exec        *ExecConfig        `yaml:"exec"`
	Health      struct {
		// Listen is host:port of /healthz and /readyz ("" for none).
		Listen string `yaml:"listen"`
	} `yaml:"health"`
}

// CredentialConfig is one credential the agent keeps: its role, its lease
// ttl, and where it goes: a file, environment variables of the exec
// child, or both.
type CredentialConfig struct {
	Role string      `yaml:"role"`
	TTL  Duration    `yaml:"ttl"`
	File *FileConfig `yaml:"file"`
	// Env maps a variable name of the child to a template of this
	// credential, e.g. DB_PASSWORD: "{{ .Password }}". Needs exec.
	Env map[string]string `yaml:"env"`

	file *template.Template
	env  map[string]*template.Template
}

// FileConfig is a file rendered from a credential and replaced atomically.
type FileConfig struct {
	Path string `yaml:"path"`
	// Mode defaults to 0600.
	Mode FileMode `yaml:"mode"`
	// Template (text/template) or TemplateFile, one of them.
	Template     string `yaml:"template"`
	TemplateFile string `yaml:"template_file"`
}

// ExecConfig is the one child command the agent runs with the
// credentials in its environment.
type ExecConfig struct {
	Command []string `yaml:"command"`
	// OnRotate is what a new credential does to the child: "restart" (the
	// default: stop it gracefully and start it with the new environment)
	// or "signal" (send it RotateSignal after re-rendering the files).
	OnRotate     string `yaml:"on_rotate"`
	RotateSignal Signal `yaml:"rotate_signal"`
	// StopSignal stops the child for a restart (default SIGTERM);
	// StopTimeout is how long it has before SIGKILL (default 10s), for a
	// restart and when the agent stops.
	StopSignal  Signal   `yaml:"stop_signal"`
	StopTimeout Duration `yaml:"stop_timeout"`
}

// OnRotate values.
const (
	RotateRestart = "restart"
	RotateSignal  = "signal"
)

// Duration is a time.Duration written as "90s", "1h".
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (e.g. 90s, 1h)", n.Line, n.Value)
	}
	d.Duration = v
	return nil
}

// FileMode is a file's permission bits in octal: 0600.
type FileMode uint32

func (m *FileMode) UnmarshalYAML(n *yaml.Node) error {
	// Octal digits whatever YAML thinks they are, as chmod reads them:
	// 0600, 600, 0o600 and "0600" are all rw-------.
	v, err := strconv.ParseUint(strings.TrimPrefix(n.Value, "0o"), 8, 32)
	if err != nil || v == 0 || v > 0o777 {
		return fmt.Errorf("line %d: mode %q: want permission bits in octal, e.g. 0600", n.Line, n.Value)
	}
	*m = FileMode(v)
	return nil
}

// Signal is a signal name: SIGHUP, HUP, SIGUSR1, ...
type Signal struct{ syscall.Signal }

var signals = map[string]syscall.Signal{
	"SIGHUP": syscall.SIGHUP, "SIGINT": syscall.SIGINT, "SIGQUIT": syscall.SIGQUIT,
	"SIGTERM": syscall.SIGTERM, "SIGUSR1": syscall.SIGUSR1, "SIGUSR2": syscall.SIGUSR2,
	"SIGWINCH": syscall.SIGWINCH, "SIGKILL": syscall.SIGKILL,
}

func (s *Signal) UnmarshalYAML(n *yaml.Node) error {
	name := strings.ToUpper(n.Value)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig, ok := signals[name]
	if !ok {
		return fmt.Errorf("line %d: unknown signal %q (SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH)", n.Line, n.Value)
	}
	s.Signal = sig
	return nil
}

// LoadConfig reads and checks the config at path.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	return ParseConfig(b)
}

// ParseConfig decodes YAML strictly, applies the defaults and checks it,
// including every template (rendered once with a sample credential, so
// that a misspelt field fails here and not at the first rotation).
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("agent config: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	return &c, nil
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (c *Config) check() error {
	if c.Broker.Addr == "" {
		return errors.New("broker.addr is required (host:port)")
	}
	if _, err := spiffeid.FromString(c.Broker.ServerID); err != nil {
		return fmt.Errorf("broker.server_id %q: %w", c.Broker.ServerID, err)
	}
	if c.SVID != nil {
		if c.WorkloadAPI != nil {
			return errors.New("set workload_api or svid (files), not both")
		}
		if c.SVID.CertFile == "" || c.SVID.KeyFile == "" || c.SVID.BundleFile == "" {
			return errors.New("svid needs cert_file, key_file and bundle_file")
		}
	}
	if len(c.Credentials) == 0 {
		return errors.New("no credentials")
	}
	paths := map[string]bool{}
	envs := map[string]string{}
	for i := range c.Credentials {
		cr := &c.Credentials[i]
		where := fmt.Sprintf("credentials[%d]", i)
		if cr.Role == "" {
			return fmt.Errorf("%s: role is required", where)
		}
		where = fmt.Sprintf("credentials[%d] (role %s)", i, cr.Role)
		if cr.TTL.Duration < 0 {
			return fmt.Errorf("%s: negative ttl", where)
		}
		if cr.File == nil && len(cr.Env) == 0 {
			return fmt.Errorf("%s: needs a file, env, or both", where)
		}
		if len(cr.Env) > 0 && c.Exec == nil {
			return fmt.Errorf("%s: env is for the exec child, and there is no exec", where)
		}
		if f := cr.File; f != nil {
			if f.Path == "" {
				return fmt.Errorf("%s: file.path is required", where)
			}
			if paths[f.Path] {
				return fmt.Errorf("%s: file %s is written by another credential too", where, f.Path)
			}
			paths[f.Path] = true
			if f.Mode == 0 {
				f.Mode = 0o600
			}
			text := f.Template
			switch {
			case (f.Template == "") == (f.TemplateFile == ""):
				return fmt.Errorf("%s: file needs one of template and template_file", where)
			case f.TemplateFile != "":
				b, err := os.ReadFile(f.TemplateFile)
				if err != nil {
					return fmt.Errorf("%s: %w", where, err)
				}
				text = string(b)
			}
			t, err := parseTemplate(f.Path, text)
			if err != nil {
				return fmt.Errorf("%s: file template: %w", where, err)
			}
			cr.file = t
		}
		cr.env = map[string]*template.Template{}
		for name, text := range cr.Env {
			if !envName.MatchString(name) {
				return fmt.Errorf("%s: env %q is not a variable name", where, name)
			}
			if other, ok := envs[name]; ok {
				return fmt.Errorf("%s: env %s is set by role %s too", where, name, other)
			}
			envs[name] = cr.Role
			t, err := parseTemplate(name, text)
			if err != nil {
				return fmt.Errorf("%s: env %s: %w", where, name, err)
			}
			cr.env[name] = t
		}
	}
	if e := c.Exec; e != nil {
		if len(e.Command) == 0 || e.Command[0] == "" {
			return errors.New("exec.command is required (a list: [program, args...])")
		}
		switch e.OnRotate {
		case "":
			e.OnRotate = RotateRestart
		case RotateRestart, RotateSignal:
		default:
			return fmt.Errorf("exec.on_rotate %q: want restart or signal", e.OnRotate)
		}
		if e.RotateSignal.Signal == 0 {
			e.RotateSignal.Signal = syscall.SIGHUP
		}
		if e.StopSignal.Signal == 0 {
			e.StopSignal.Signal = syscall.SIGTERM
		}
		if e.StopTimeout.Duration <= 0 {
			e.StopTimeout.Duration = 10 * time.Second
		}
	}
	return nil
}
