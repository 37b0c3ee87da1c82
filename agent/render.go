package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/credbroker/credbroker/client"
)

// funcs are the template helpers (docs/agent.md).
var funcs = template.FuncMap{
	"json":       toJSON,
	"dotenv":     dotenv,
	"shellquote": shellQuote,
	"libpq":      libpq,
}

func parseTemplate(name, text string) (*template.Template, error) {
	t, err := template.New(name).Funcs(funcs).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	// A dry run on a made-up credential: an unknown field fails now.
	if _, err := render(t, sample); err != nil {
		return nil, err
	}
	return t, nil
}

var sample = &client.Credential{
	LeaseID: "00000000-0000-0000-0000-000000000000", Role: "role", Username: "user", Password: "password",
	Database: "db", DBName: "dbname", Host: "localhost", Port: 5432, DSN: "postgres://user:password@localhost:5432/dbname",
	ExpireTime: time.Unix(0, 0), MaxExpireTime: time.Unix(0, 0),
}

// render executes t on c. Its errors name the template and the field,
// never a value.
func render(t *template.Template, c *client.Credential) ([]byte, error) {
	var b bytes.Buffer
	if err := t.Execute(&b, c); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// credJSON is what {{ json . }} writes for a credential.
type credJSON struct {
	Username      string    `json:"username"`
	Password      string    `json:"password"`
	Host          string    `json:"host"`
	Port          int       `json:"port"`
	Database      string    `json:"database"`
	DBName        string    `json:"db_name"`
	DSN           string    `json:"dsn"`
	LeaseID       string    `json:"lease_id"`
	Role          string    `json:"role"`
	ExpireTime    time.Time `json:"expire_time"`
	MaxExpireTime time.Time `json:"max_expire_time"`
}

func toJSON(v any) (string, error) {
	if c, ok := v.(*client.Credential); ok {
		v = credJSON{c.Username, c.Password, c.Host, c.Port, c.Database, c.DBName, c.DSN, c.LeaseID, c.Role, c.ExpireTime, c.MaxExpireTime}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "", errors.New("json: cannot encode the value") // no value in the error
	}
	return string(b), nil
}

// dotenv is a .env for the credential, usable both as a Docker env file
// and by `set -a; . file` in a shell (values quoted only when they must be).
func dotenv(c *client.Credential) string {
	var b strings.Builder
	for _, kv := range [][2]string{
		{"DB_HOST", c.Host}, {"DB_PORT", strconv.Itoa(c.Port)}, {"DB_NAME", c.DBName},
		{"DB_USER", c.Username}, {"DB_PASSWORD", c.Password}, {"DATABASE_URL", c.DSN},
	} {
		b.WriteString(kv[0] + "=" + shellQuote(kv[1]) + "\n")
	}
	return b.String()
}

// shellQuote quotes s for a POSIX shell when it holds anything but
// [A-Za-z0-9_./:@%+,=-].
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_./:@%+,=-", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// libpq is the credential as a libpq keyword/value connection string.
func libpq(c *client.Credential) string {
	q := func(s string) string {
		return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
	}
	return fmt.Sprintf("host=%s port=%d dbname=%s user=%s password=%s",
		q(c.Host), c.Port, q(c.DBName), q(c.Username), q(c.Password))
}

// writeFileAtomic replaces path with data: a temporary file in the same
// directory, written, synced and renamed over path, then the directory
// synced. A reader sees the old file or the new one, never a part.
func writeFileAtomic(path string, data []byte, mode os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(mode); err != nil { // not subject to the umask
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // the rename's durability; tmpfs has none to give
		d.Close()
	}
	return nil
}
