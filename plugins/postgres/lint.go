package postgres

import (
	"strings"

	"github.com/credbroker/credbroker/plugins"
)

// roleAttributes are the CREATE/ALTER ROLE attributes that reach beyond the
// objects a template grants: a superuser, a user who creates roles (and so
// can grant itself any role it creates, PostgreSQL < 16: any role),
// databases, replication connections (read every table through a
// replication slot), or ignores row-level security. CREATEUSER is the old
// spelling of SUPERUSER.
var roleAttributes = map[string]bool{
	"SUPERUSER": true, "CREATEUSER": true, "CREATEROLE": true,
	"CREATEDB": true, "REPLICATION": true, "BYPASSRLS": true,
}

// privilegedRoles are the predefined roles whose membership is refused:
// they read or write files on the server or run programs as the server's
// OS user, signal other sessions, read or write every table whatever its
// grants, or act on the whole cluster. pg_monitor and its parts
// (pg_read_all_settings, pg_read_all_stats, pg_stat_scan_tables) are
// allowed: they observe, for monitoring agents (docs/config.md).
var privilegedRoles = map[string]bool{
	"pg_read_server_files":        true,
	"pg_write_server_files":       true,
	"pg_execute_server_program":   true,
	"pg_signal_backend":           true,
	"pg_read_all_data":            true,
	"pg_write_all_data":           true,
	"pg_checkpoint":               true,
	"pg_create_subscription":      true,
	"pg_use_reserved_connections": true,
	"pg_signal_autovacuum_worker": true,
}

// fileFunctions read or write server files (or large objects from them);
// EXECUTE on them is file access.
var fileFunctions = map[string]bool{
	"pg_read_file": true, "pg_read_binary_file": true, "pg_ls_dir": true,
	"pg_stat_file": true, "lo_import": true, "lo_export": true,
}

// PrivilegedClauses implements plugins.Factory.
func (Factory) PrivilegedClauses(creation []string) []plugins.PrivilegedClause {
	var out []plugins.PrivilegedClause
	for i, s := range creation {
		for _, stmt := range splitStatements(tokens(s)) {
			if what := privileged(stmt); what != "" {
				out = append(out, plugins.PrivilegedClause{Statement: i + 1, What: what})
			}
		}
	}
	return out
}

// splitStatements splits tokens at top-level semicolons.
func splitStatements(toks []token) [][]token {
	var out [][]token
	start := 0
	for i, t := range toks {
		if t.kind == tokPunct && t.text == ";" {
			if i > start {
				out = append(out, toks[start:i])
			}
			start = i + 1
		}
	}
	if start < len(toks) {
		out = append(out, toks[start:])
	}
	return out
}

// privileged returns what the first privileged clause of one statement
// does, or "".
func privileged(stmt []token) string {
	word := func(i int) string {
		if i < len(stmt) && stmt[i].kind == tokWord {
			return stmt[i].text
		}
		return ""
	}
	first, second := word(0), word(1)
	isRoleStmt := (first == "CREATE" || first == "ALTER") && (second == "ROLE" || second == "USER" || second == "GROUP")
	switch {
	case first == "ALTER" && second == "SYSTEM":
		return "runs ALTER SYSTEM"
	case first == "LOAD":
		return "runs LOAD (a shared library into the server)"
	case first == "COPY":
		for i, t := range stmt {
			if t.kind == tokWord && t.text == "PROGRAM" {
				return "runs COPY ... PROGRAM"
			}
			if t.kind == tokWord && (t.text == "FROM" || t.text == "TO") && i+1 < len(stmt) && stmt[i+1].kind == tokString {
				return "runs COPY to or from a server file"
			}
		}
	}
	if isRoleStmt {
		// ALTER ROLE … SET/RESET configures a setting, RENAME TO names it:
		// the words after are values, not attributes.
		for i, t := range stmt[2:] {
			if t.kind == tokWord && (t.text == "SET" || t.text == "RESET" || t.text == "RENAME") {
				stmt = stmt[:i+2]
				break
			}
		}
		for _, t := range stmt[2:] {
			if t.kind == tokWord && roleAttributes[t.text] {
				return "grants " + t.text
			}
		}
	}
	if !isRoleStmt && first != "GRANT" {
		return ""
	}
	for i, t := range stmt {
		if name, ok := identifier(t); ok {
			switch {
			case privilegedRoles[name]:
				return "grants membership of " + name
			case first == "GRANT" && fileFunctions[name]:
				return "grants EXECUTE on " + name + " (server file access)"
			}
		}
		if first != "GRANT" || t.kind != tokWord || t.text != "WITH" {
			continue
		}
		// GRANT … WITH GRANT OPTION; GRANT role … WITH ADMIN OPTION (16+:
		// WITH ADMIN TRUE, possibly after other options).
		rest := stmt[i+1:]
		for j, u := range rest {
			if u.kind != tokWord {
				continue
			}
			if u.text == "GRANT" {
				return "grants WITH GRANT OPTION (the user may grant its privileges to others)"
			}
			if u.text == "ADMIN" && !(j+1 < len(rest) && rest[j+1].kind == tokWord && rest[j+1].text == "FALSE") {
				return "grants WITH ADMIN OPTION (the user may grant the role to others)"
			}
		}
	}
	return ""
}

// identifier is the name t stands for, if it is an identifier: unquoted
// names fold to lower case, quoted ones are exact.
func identifier(t token) (string, bool) {
	switch t.kind {
	case tokWord:
		return strings.ToLower(t.text), true
	case tokQuotedIdent:
		return t.text, true
	}
	return "", false
}
