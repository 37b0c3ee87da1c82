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
	return plugins.LintStatements(creation, tokens, privileged)
}

// privileged returns what the first privileged clause of one statement
// does, or "".
func privileged(stmt []token) string {
	word := func(i int) string {
		if i < len(stmt) && stmt[i].Kind == tokWord {
			return stmt[i].Text
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
			if t.Kind == tokWord && t.Text == "PROGRAM" {
				return "runs COPY ... PROGRAM"
			}
			if t.Kind == tokWord && (t.Text == "FROM" || t.Text == "TO") && i+1 < len(stmt) && stmt[i+1].Kind == tokString {
				return "runs COPY to or from a server file"
			}
		}
	}
	if isRoleStmt {
		// ALTER ROLE … SET/RESET configures a setting, RENAME TO names it:
		// the words after are values, not attributes.
		for i, t := range stmt[2:] {
			if t.Kind == tokWord && (t.Text == "SET" || t.Text == "RESET" || t.Text == "RENAME") {
				stmt = stmt[:i+2]
				break
			}
		}
		for _, t := range stmt[2:] {
			if t.Kind == tokWord && roleAttributes[t.Text] {
				return "grants " + t.Text
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
		if first != "GRANT" || t.Kind != tokWord || t.Text != "WITH" {
			continue
		}
		// GRANT … WITH GRANT OPTION; GRANT role … WITH ADMIN OPTION (16+:
		// WITH ADMIN TRUE, possibly after other options).
		rest := stmt[i+1:]
		for j, u := range rest {
			if u.Kind != tokWord {
				continue
			}
			if u.Text == "GRANT" {
				return "grants WITH GRANT OPTION (the user may grant its privileges to others)"
			}
			if u.Text == "ADMIN" && !(j+1 < len(rest) && rest[j+1].Kind == tokWord && rest[j+1].Text == "FALSE") {
				return "grants WITH ADMIN OPTION (the user may grant the role to others)"
			}
		}
	}
	return ""
}

// identifier is the name t stands for, if it is an identifier: unquoted
// names fold to lower case, quoted ones are exact.
func identifier(t token) (string, bool) {
	switch t.Kind {
	case tokWord:
		return strings.ToLower(t.Text), true
	case tokQuotedIdent:
		return t.Text, true
	}
	return "", false
}
