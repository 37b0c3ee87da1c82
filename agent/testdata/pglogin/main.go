// Command pglogin is the agent tests' app: it logs in to PostgreSQL with
// the credential in its environment (DB_HOST, DB_PORT, DB_NAME, DB_USER,
// DB_PASSWORD) and appends "login <user>" to -marker, or "failed <user>".
// Then it exits with -exit, or with -wait waits for SIGTERM (exit 0) and
// on SIGHUP logs in again with the .env file -file (the dotenv format).
// It never prints a password.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

func main() {
	marker := flag.String("marker", "", "file to append results to")
	exit := flag.Int("exit", 0, "exit status after the login")
	wait := flag.Bool("wait", false, "wait for SIGTERM; log in again with -file on SIGHUP")
	file := flag.String("file", "", "a dotenv file for SIGHUP")
	flag.Parse()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP)
	login(*marker, os.Getenv)
	if !*wait {
		os.Exit(*exit)
	}
	for s := range sigs {
		if s == syscall.SIGTERM {
			appendLine(*marker, "sigterm")
			os.Exit(0)
		}
		env, err := readEnv(*file)
		if err != nil {
			appendLine(*marker, "bad file")
			continue
		}
		login(*marker, func(k string) string { return env[k] })
	}
}

func login(marker string, get func(string) string) {
	port, _ := strconv.Atoi(get("DB_PORT"))
	cfg, err := pgx.ParseConfig("sslmode=disable")
	if err != nil {
		panic(err)
	}
	cfg.Host, cfg.Port, cfg.Database = get("DB_HOST"), uint16(port), get("DB_NAME")
	cfg.User, cfg.Password = get("DB_USER"), get("DB_PASSWORD")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err == nil {
		err = c.Ping(ctx)
		c.Close(ctx)
	}
	if err != nil {
		appendLine(marker, "failed "+cfg.User)
		return
	}
	appendLine(marker, "login "+cfg.User)
}

// readEnv reads KEY=value lines, values optionally in single quotes.
func readEnv(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
			v = strings.ReplaceAll(v[1:len(v)-1], `'\''`, `'`)
		}
		env[k] = v
	}
	return env, sc.Err()
}

func appendLine(path, line string) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pglogin: marker:", err)
		os.Exit(1)
	}
	defer f.Close()
	fmt.Fprintln(f, line)
}
