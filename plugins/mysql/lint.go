package mysql

import (
	"strings"

	"github.com/credbroker/credbroker/plugins"
)

// tokenKind classifies the tokens of a statement for the privilege lint.
// The lint's tokens (plugins.Token). Words are upper-cased; a quoted
// identifier (`…`) is exact; '…' and "…" are strings (unless ANSI_QUOTES).
type token = plugins.Token

const (
	tokWord        = plugins.TokWord
	tokQuotedIdent = plugins.TokQuotedIdent
	tokString      = plugins.TokString
	tokPlaceholder = plugins.TokPlaceholder
	tokPunct       = plugins.TokPunct
)

// tokens splits sql into tokens as the MySQL/MariaDB lexer would under the
// default sql_mode (backslash escapes in strings, "…" a string), dropping
// whitespace and comments: '#' and '-- ' to the end of the line, /* … */.
// The body of an executable comment (/*! … */, /*!50700 … */, MariaDB's
// /*M! … */) is code the server runs, so it is read as tokens. An
// unterminated quote or comment runs to the end.
func tokens(sql string) []token {
	var out []token
	n := len(sql)
	for i := 0; i < n; {
		c := sql[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '#', c == '-' && strings.HasPrefix(sql[i:], "--") && (i+2 == n || strings.IndexByte(" \t\n\r\f\v", sql[i+2]) >= 0):
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				return out
			}
			i += j + 1
		case c == '/' && strings.HasPrefix(sql[i:], "/*!"), c == '/' && strings.HasPrefix(sql[i:], "/*M!"):
			// Executable comment: skip the opener and version, keep the body.
			i += strings.IndexByte(sql[i:], '!') + 1
			for i < n && '0' <= sql[i] && sql[i] <= '9' {
				i++
			}
		case c == '*' && strings.HasPrefix(sql[i:], "*/"):
			i += 2 // the end of an executable comment
		case c == '/' && strings.HasPrefix(sql[i:], "/*"):
			j := strings.Index(sql[i+2:], "*/")
			if j < 0 {
				return out
			}
			i += 2 + j + 2
		case c == '{' && strings.HasPrefix(sql[i:], "{{"):
			j := strings.Index(sql[i:], "}}")
			if j < 0 {
				j = n - i - 2
			}
			out = append(out, token{Kind: tokPlaceholder, Text: sql[i : i+j+2]})
			i += j + 2
		case c == '\'' || c == '"' || c == '`':
			j, body := quoted(sql, i+1, c)
			switch c {
			case '`':
				out = append(out, token{Kind: tokQuotedIdent, Text: body})
			default:
				out = append(out, token{Kind: tokString})
			}
			i = j
		case c == '_' || c == '$' || c >= 0x80 || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9':
			j := i
			for j < n && (sql[j] == '_' || sql[j] == '$' || sql[j] >= 0x80 || 'a' <= sql[j] && sql[j] <= 'z' || 'A' <= sql[j] && sql[j] <= 'Z' || '0' <= sql[j] && sql[j] <= '9') {
				j++
			}
			out = append(out, token{Kind: tokWord, Text: strings.ToUpper(sql[i:j])})
			i = j
		default:
			out = append(out, token{Kind: tokPunct, Text: sql[i : i+1]})
			i++
		}
	}
	return out
}

// quoted returns the index just past the quote q closing a token whose body
// starts at i, and the body with doubled quotes undone. In strings a
// backslash escapes the next byte; in `identifiers` it does not.
func quoted(sql string, i int, q byte) (int, string) {
	var b strings.Builder
	for i < len(sql) {
		c := sql[i]
		switch {
		case c == '\\' && q != '`' && i+1 < len(sql):
			b.WriteByte(sql[i+1])
			i += 2
		case c == q && i+1 < len(sql) && sql[i+1] == q:
			b.WriteByte(q)
			i += 2
		case c == q:
			return i + 1, b.String()
		default:
			b.WriteByte(c)
			i++
		}
	}
	return len(sql), b.String()
}

// privilegedPrivileges are privileges of the whole server (GRANT … ON *.*
// only): they read or write server files, see or kill every session,
// stop or reconfigure the server, create or impersonate accounts, or read
// every change through replication. The level check (ON *.*) catches the
// ones not listed; the list names them in the message.
var privilegedPrivileges = map[string]bool{
	"SUPER": true, "FILE": true, "PROCESS": true, "SHUTDOWN": true, "RELOAD": true,
	"CREATE USER": true, "GRANT OPTION": true, "PROXY": true,
	"REPLICATION SLAVE": true, "REPLICATION CLIENT": true, "REPLICA": true,
	"REPLICATION REPLICA": true, "REPLICATION MASTER ADMIN": true, "REPLICATION SLAVE ADMIN": true,
	"BINLOG ADMIN": true, "BINLOG REPLAY": true, "BINLOG MONITOR": true,
	"CONNECTION ADMIN": true, "READ_ONLY ADMIN": true, "SET USER": true, "FEDERATED ADMIN": true,
	"CREATE TABLESPACE": true,
	// MySQL 8 dynamic privileges.
	"SYSTEM_USER": true, "SYSTEM_VARIABLES_ADMIN": true, "ROLE_ADMIN": true, "CONNECTION_ADMIN": true,
	"BINLOG_ADMIN": true, "SET_USER_ID": true, "SET_ANY_DEFINER": true, "ENCRYPTION_KEY_ADMIN": true,
	"PERSIST_RO_VARIABLES_ADMIN": true, "REPLICATION_SLAVE_ADMIN": true, "GROUP_REPLICATION_ADMIN": true,
	"BACKUP_ADMIN": true, "CLONE_ADMIN": true, "AUDIT_ADMIN": true, "FIREWALL_ADMIN": true,
	"SERVICE_CONNECTION_ADMIN": true, "APPLICATION_PASSWORD_ADMIN": true, "AUTHENTICATION_POLICY_ADMIN": true,
}

// PrivilegedClauses implements plugins.Factory.
func (Factory) PrivilegedClauses(creation []string) []plugins.PrivilegedClause {
	return plugins.LintStatements(creation, tokens, privileged)
}

func isWord(t token, w string) bool { return t.Kind == tokWord && t.Text == w }

// privileged returns what the first privileged clause of one statement
// does, or "".
func privileged(stmt []token) string {
	first := ""
	if stmt[0].Kind == tokWord {
		first = stmt[0].Text
	}
	hasWord := func(ws ...string) string {
		for _, t := range stmt {
			for _, w := range ws {
				if isWord(t, w) {
					return w
				}
			}
		}
		return ""
	}
	switch first {
	case "GRANT":
		return privilegedGrant(stmt[1:])
	case "SET":
		if w := hasWord("GLOBAL", "PERSIST", "PERSIST_ONLY"); w != "" {
			return "runs SET " + w + " (a server-wide setting)"
		}
	case "INSTALL", "UNINSTALL", "SHUTDOWN", "RESTART":
		return "runs " + first
	case "LOAD":
		return "runs LOAD DATA/XML (file access)"
	case "INSERT", "UPDATE", "DELETE", "REPLACE":
		for i, t := range stmt {
			if name, ok := identifier(t); ok && strings.EqualFold(name, "mysql") && i+1 < len(stmt) && stmt[i+1].Text == "." {
				return "writes the grant tables (mysql.*)"
			}
		}
	}
	for i, t := range stmt {
		if isWord(t, "INTO") && i+1 < len(stmt) && (isWord(stmt[i+1], "OUTFILE") || isWord(stmt[i+1], "DUMPFILE")) {
			return "writes a server file (INTO " + stmt[i+1].Text + ")"
		}
	}
	return ""
}

// privilegedGrant lints what follows GRANT.
func privilegedGrant(rest []token) string {
	// The privilege list runs to ON; a GRANT without ON grants roles.
	on := -1
	for i, t := range rest {
		if isWord(t, "ON") {
			on = i
			break
		}
		if isWord(t, "TO") {
			break
		}
	}
	if on >= 0 {
		var privs []string
		var cur []string
		depth := 0
		for _, t := range rest[:on] {
			switch {
			case t.Kind == tokPunct && t.Text == "(":
				depth++
			case t.Kind == tokPunct && t.Text == ")":
				depth--
			case depth > 0:
			case t.Kind == tokPunct && t.Text == ",":
				privs, cur = append(privs, strings.Join(cur, " ")), nil
			case t.Kind == tokWord:
				cur = append(cur, t.Text)
			}
		}
		privs = append(privs, strings.Join(cur, " "))
		for _, p := range privs {
			if privilegedPrivileges[p] {
				return "grants " + p
			}
		}
		level := rest[on+1:]
		if len(level) > 0 && (isWord(level[0], "TABLE") || isWord(level[0], "FUNCTION") || isWord(level[0], "PROCEDURE") || isWord(level[0], "PACKAGE")) {
			level = level[1:]
		}
		// USAGE is no privilege: GRANT USAGE ON *.* … REQUIRE SSL or WITH
		// MAX_… sets account options, as MariaDB templates often do.
		usage := len(privs) == 1 && privs[0] == "USAGE"
		if !usage && len(level) >= 3 && level[0].Text == "*" && level[1].Text == "." && level[2].Text == "*" {
			return "grants " + strings.Join(privs, ", ") + " ON *.* (every database)"
		}
		if len(level) >= 2 && level[1].Text == "." {
			if name, ok := identifier(level[0]); ok && strings.EqualFold(name, "mysql") {
				return "grants " + strings.Join(privs, ", ") + " ON the mysql schema (the grant tables)"
			}
		}
	}
	for i, t := range rest {
		if !isWord(t, "WITH") || i+1 >= len(rest) {
			continue
		}
		switch {
		case isWord(rest[i+1], "GRANT"):
			return "grants WITH GRANT OPTION (the user may grant its privileges to others)"
		case isWord(rest[i+1], "ADMIN"):
			return "grants WITH ADMIN OPTION (the user may grant the role to others)"
		}
	}
	return ""
}

// identifier is the name t stands for, if it is an identifier.
func identifier(t token) (string, bool) {
	switch t.Kind {
	case tokWord, tokQuotedIdent:
		return t.Text, true
	}
	return "", false
}
